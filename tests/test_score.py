"""The per-document scorer against independent references: transformers' own forward for
documents that fit the cache, the streaming engine (what `sepcli stream` runs) for longer ones,
and one-at-a-time scoring for the batched path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sepcli.score import scorer as scorer_module
from sepcli.score.scorer import (
    CPU_BATCH_TOKENS,
    GPU_BATCH_TOKENS,
    DocScorer,
    default_batch_tokens,
    text_pieces,
)
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essays_text

SEED = 3
CONFIG = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)


@pytest.fixture(scope="module")
def model(tokenizer):
    from tests.helpers import build_tiny_llama

    print(f"tiny llama seed={SEED}")
    return build_tiny_llama(len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=SEED)


@pytest.fixture(scope="module")
def scorer(model, tokenizer):
    return DocScorer(model, tokenizer, CONFIG, separator_mask(tokenizer))


@pytest.fixture(scope="module")
def docs():
    """Real paragraphs of mixed length: some fit the 40-slot cache, some do not."""
    text = essays_text(max_chars=6000)
    words = text.split(" ")
    out, i, sizes = [], 0, [1, 3, 7, 12, 2, 30, 5, 60, 9, 4, 25, 80, 6]
    for n in sizes:
        out.append(" ".join(words[i : i + n]))
        i += n
    return out


def hf_nll(model, ids: list[int]) -> tuple[int, float]:
    """transformers' own forward over one unpadded document: (scored tokens, NLL sum)."""
    logits = model(torch.tensor([ids])).logits[0].float()
    nll = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum")
    return len(ids) - 1, float(nll)


def engine_nll(model, tokenizer, ids: list[int]) -> tuple[int, float]:
    """What `sepcli stream` computes for a text: the engine over BOS + ids, chunk by chunk."""
    stats = list(StreamEngine(model, CONFIG, separator_mask(tokenizer)).run([ids]))
    return sum(s.scored for s in stats), sum(s.nll_sum for s in stats)


def ids_of(tokenizer, text: str) -> list[int]:
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def test_short_documents_equal_a_plain_forward(scorer, model, tokenizer, docs):
    scores = scorer.score(docs)
    checked = 0
    for text, got in zip(docs, scores, strict=True):
        ids = ids_of(tokenizer, text)
        if len(ids) > scorer.capacity:
            continue
        n, total = hf_nll(model, ids)
        assert got.tokens == n
        assert math.isclose(got.nll_sum, total, rel_tol=1e-5), (text, got, total)
        checked += 1
    assert checked >= 5


def test_long_documents_equal_the_stream(scorer, model, tokenizer, docs):
    scores = scorer.score(docs)
    checked = 0
    for text, got in zip(docs, scores, strict=True):
        ids = ids_of(tokenizer, text)
        if len(ids) <= scorer.capacity:
            continue
        n, total = engine_nll(model, tokenizer, ids)
        assert got.tokens == n == len(ids) - 1
        assert math.isclose(got.nll_sum, total, rel_tol=1e-5)
        checked += 1
    assert checked >= 2


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_the_cache_boundary(scorer, model, tokenizer, extra):
    """A document of capacity - 1, capacity and capacity + 1 tokens (start token included)
    scores as the stream scores it; the first two also as a plain forward."""
    ids = ids_of(tokenizer, essays_text(max_chars=3000))[: scorer.capacity + extra]
    text = tokenizer.decode(ids[1:])
    assert ids_of(tokenizer, text) == ids
    got = scorer.score([text])[0]
    n, total = engine_nll(model, tokenizer, ids)
    assert got.tokens == n and math.isclose(got.nll_sum, total, rel_tol=1e-5)
    if extra <= 0:
        assert math.isclose(got.nll_sum, hf_nll(model, ids)[1], rel_tol=1e-5)


def test_batching_changes_nothing(model, tokenizer, docs):
    """Many documents in padded batches == each alone (batch of one, no padding)."""
    batched = DocScorer(model, tokenizer, CONFIG, separator_mask(tokenizer), batch_tokens=4096)
    alone = DocScorer(model, tokenizer, CONFIG, separator_mask(tokenizer), batch_tokens=1)
    many = batched.score(docs)
    for text, got in zip(docs, many, strict=True):
        one = alone.score([text])[0]
        assert got.tokens == one.tokens
        assert math.isclose(got.nll_sum, one.nll_sum, rel_tol=1e-6, abs_tol=1e-6)


def test_batch_tokens_default_by_device(model, tokenizer):
    seps = separator_mask(tokenizer)
    assert DocScorer(model, tokenizer, CONFIG, seps).batch_tokens == CPU_BATCH_TOKENS
    assert DocScorer(model, tokenizer, CONFIG, seps, batch_tokens=77).batch_tokens == 77
    assert default_batch_tokens(torch.device("cuda")) == GPU_BATCH_TOKENS > CPU_BATCH_TOKENS


def test_empty_and_one_token_documents(scorer, model, tokenizer):
    empty, one = scorer.score(["", "Hello"])
    assert (empty.tokens, empty.nll, empty.ppl) == (0, None, None)
    ids = ids_of(tokenizer, "Hello")
    assert one.tokens == 1 == len(ids) - 1
    assert math.isclose(one.nll_sum, hf_nll(model, ids)[1], rel_tol=1e-5)
    assert math.isclose(one.ppl, math.exp(one.nll_sum), rel_tol=1e-12)


def test_a_text_longer_than_a_piece_streams_in_pieces(scorer, model, tokenizer, monkeypatch):
    monkeypatch.setattr(scorer_module, "PIECE_CHARS", 800)  # small pieces: a fast tiny test
    text = essays_text(max_chars=2000)
    pieces = list(scorer_module.text_pieces(text))
    assert len(pieces) == 3 and "".join(pieces) == text
    ids = ids_of(tokenizer, text)
    got = scorer.score([text])[0]
    n, total = engine_nll(model, tokenizer, ids)
    assert got.tokens == n and math.isclose(got.nll_sum, total, rel_tol=1e-5)


def test_text_pieces_cut_only_before_words():
    text = ("word " * 50_000) + "x" * 10 + ("  two  spaces" * 10_000)
    pieces = list(text_pieces(text, size=1000))
    assert "".join(pieces) == text and len(pieces) > 100
    for piece in pieces[1:]:
        assert piece[0] == " " and piece[1] != " "


def test_full_method_refuses_only_the_document_too_long(model, tokenizer):
    full = StreamConfig(method="full")
    scorer = DocScorer(model, tokenizer, full, separator_mask(tokenizer))
    long_text = essays_text(max_chars=4000)  # > 512 tokens, the tiny model's context
    got = scorer.score(["A short one.", long_text])
    assert got[0].tokens == 4
    assert "longer than the model's context" in str(got[1])
