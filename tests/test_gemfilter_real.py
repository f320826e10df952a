"""The embedded SmolLM2-135M-Instruct: a needle in ~2K tokens of real essays is selected by the
filter pass and answered from the selection."""

from __future__ import annotations

import pytest

from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.needles import NEEDLES, make_case
from sepcli.gemfilter.pipeline import Result, answer_text, filter_prompt, prepare, run_qa
from sepcli.gemfilter.selection import Selected

# The layer `python bench/niah_calibrate.py --lengths 1024,2048 --needles 3` chose (0-based).
SMOLLM2_LAYER = 17


@pytest.mark.real
def test_needle_in_2k_tokens_is_selected_and_answered(real_model):
    lm = real_model
    case = make_case(lm.tokenizer, NEEDLES[5], 2048, 0.5)  # a needle calibration never saw
    cfg = QAConfig(method="gemfilter", layer=SMOLLM2_LAYER, topk=256, max_new_tokens=24)
    prompt = prepare(lm.model, lm.tokenizer, case.document, case.question, cfg)
    assert prompt.doc_end - prompt.doc_start > 1900
    chosen = filter_prompt(lm.model, prompt, cfg)
    kept = set(chosen.indices.tolist())
    start = case.document.index(case.needle.answer, case.needle_chars[0])
    answer_tokens = prompt.tokens_of_chars(start, start + len(case.needle.answer))
    assert all(i in kept for i in answer_tokens)  # the answer's words reach the answer pass
    result = answer_text(lm.model, lm.tokenizer, case.document, case.question, cfg)
    assert result.selected_tokens < prompt.n // 4
    assert case.is_correct(result.answer), result.answer


@pytest.mark.real
def test_needle_in_a_document_over_the_context_is_found_across_segments(real_model):
    """~12K tokens, 1.5x SmolLM2's 8K context: two filter passes, then the answer from 1024."""
    lm = real_model
    case = make_case(lm.tokenizer, NEEDLES[3], 12288, 0.5)
    cfg = QAConfig(method="gemfilter", layer=SMOLLM2_LAYER, topk=1024, max_new_tokens=16)
    events = list(run_qa(lm.model, lm.tokenizer, case.document, case.question, cfg))
    chosen, result = events[0], events[-1]
    assert isinstance(chosen, Selected) and isinstance(result, Result)
    prompt = chosen.prompt
    assert prompt.n > lm.model.config.max_position_embeddings and chosen.segments == 2
    start = case.document.index(case.needle.answer, case.needle_chars[0])
    kept = set(chosen.indices.tolist())
    assert all(i in kept for i in prompt.tokens_of_chars(start, start + len(case.needle.answer)))
    assert result.selected_tokens < lm.model.config.max_position_embeddings
    assert case.is_correct(result.answer), result.answer


@pytest.mark.real
def test_one_reading_answers_two_questions_like_separate_runs(real_model):
    """The embedded model (fp32, the fixture's): a 2K-token document read once serves two questions;
    kept tokens and greedy answers equal separate runs'."""
    from sepcli.gemfilter.prompt import encode_document
    from sepcli.gemfilter.reading import make_reading

    lm = real_model
    case = make_case(lm.tokenizer, NEEDLES[4], 2048, 0.3)
    cfg = QAConfig(method="gemfilter", layer=SMOLLM2_LAYER, topk=256, max_new_tokens=12)
    doc = encode_document(lm.tokenizer, case.document)
    reading = make_reading(lm.model, lm.name, lm.tokenizer, doc, cfg)
    for question in (case.question, "What is the essay about?"):
        shared = list(run_qa(lm.model, lm.tokenizer, case.document, question, cfg, None, reading))
        alone = list(run_qa(lm.model, lm.tokenizer, case.document, question, cfg))
        assert shared[0].reused and not alone[0].reused
        assert shared[0].indices.tolist() == alone[0].indices.tolist()
        assert shared[-1].answer == alone[-1].answer
