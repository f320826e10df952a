"""`sepcli gemfilter`: print only the document text GemFilter keeps for a question.

The kept text goes to stdout (or indices and scores with --json); settings and --show to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    guarded,
)
from sepcli.commands.qa_options import (
    DocArg,
    LayerOpt,
    OptionalQuestionArg,
    SegmentOpt,
    SmoothOpt,
    SplitOpt,
    TopkOpt,
    UnitOpt,
    WindowOpt,
    qa_config,
    setup,
)
from sepcli.commands.questions import (
    DocCacheOpt,
    QuestionsOpt,
    RebuildOpt,
    open_session,
    reading_fields,
)
from sepcli.errors import ConfigError
from sepcli.gemfilter.config import DEFAULT_SMOOTH, DEFAULT_TOPK, DEFAULT_UNIT


@guarded
def gemfilter(
    doc: DocArg,
    question: OptionalQuestionArg = None,
    model: ModelOpt = MODEL_DEFAULT,
    layer: LayerOpt = "auto",
    topk: TopkOpt = DEFAULT_TOPK,
    smooth: SmoothOpt = DEFAULT_SMOOTH,
    window: WindowOpt = "question",
    split: SplitOpt = True,
    segment_tokens: SegmentOpt = 0,
    unit: UnitOpt = DEFAULT_UNIT,
    questions: QuestionsOpt = None,
    doc_cache: DocCacheOpt = None,
    rebuild: RebuildOpt = False,
    gap: Annotated[
        str,
        typer.Option(
            "--gap",
            help="Text printed between non-adjacent selected runs (default: ' … ').",
            show_default=False,
        ),
    ] = " … ",
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Also show the highlighted document (stderr; unselected stretches elided).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print only the document text GemFilter keeps for QUESTION (in order), e.g. to shrink a long
    file before giving it to another LLM. --json: indices (into the document's tokens) and scores.
    --questions: one JSON line per question, the document read once."""
    from sepcli.gemfilter.pipeline import filter_prompt

    cfg = qa_config(
        layer=layer,
        topk=topk,
        smooth=smooth,
        window=window,
        split=split,
        segment_tokens=segment_tokens,
        unit=unit,
    )
    if (question is None) == (questions is None):
        raise ConfigError("give either QUESTION or --questions FILE")
    if question is not None and doc_cache is None:
        lm, prompt, cfg, question = setup(doc, question, model, device, dtype, threads, cfg)
        chosen = filter_prompt(lm.model, prompt, cfg)
        emit(lm, chosen, cfg, gap, show, json_out)
        return
    run = open_session(
        doc, question, questions, doc_cache, rebuild, (model, device, dtype, threads), cfg
    )
    named = questions is not None
    for prompt, (_, q) in zip(run.prompts, run.asked, strict=True):
        chosen = filter_prompt(run.lm.model, prompt, run.cfg, run.reading)
        extra = {"question": q} if named else None
        emit(run.lm, chosen, run.cfg, gap, show, json_out or named, extra, run.reading)


def emit(lm, chosen, cfg, gap: str, show: bool, json_out: bool, named=None, reading=None):
    """Print one question's kept text, or its JSON record (``named``: with the question and
    what the shared reading did, as --questions prints)."""
    from sepcli.commands.show import show_selection
    from sepcli.gemfilter.selection import kept_text

    if show:
        show_selection(chosen)
    prompt = chosen.prompt
    text = kept_text(chosen, lm.tokenizer, gap)
    if not json_out:
        typer.echo(text.strip())
        return
    doc_idx = chosen.document_indices()
    record = {
        **(named or {}),
        "model": lm.name,
        "layer": cfg.layer,
        "topk": cfg.topk,
        "prompt_tokens": prompt.n,
        "document_tokens": prompt.doc_len,
        "segments": chosen.segments,
        "indices": [i - prompt.doc_start for i in doc_idx],
        "scores": [round(float(chosen.scores[i]), 6) for i in doc_idx],
        "text": text,
    }
    if named is not None:
        record.update(reading_fields(reading, chosen.reused))
    typer.echo(json.dumps(record))
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    app.command(
        "gemfilter",
        short_help="Print only the document text GemFilter keeps for a "
        "question (to shrink a file for another tool).",
    )(gemfilter)
