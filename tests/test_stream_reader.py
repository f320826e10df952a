"""Incremental reading/tokenising, separator detection on the real tokenizer, and one real-model
perplexity check."""

from __future__ import annotations

import io
import math

import pytest
import torch

from sepcli.errors import InputError
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.reader import ReadStats, limit, safe_cut, skip, stream_tokens
from sepcli.texts import essays_text


def flat(blocks):
    return [i for b in blocks for i in b]


@pytest.mark.parametrize("block_bytes", [7, 997, 1 << 16])
def test_incremental_tokenisation_equals_whole_text(tokenizer, block_bytes):
    text = essays_text(max_chars=20000) + " Unicode: naïve café — “quotes” 日本語."
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    stats = ReadStats()
    got = flat(stream_tokens(tokenizer, io.BytesIO(text.encode()), stats, block_bytes=block_bytes))
    assert got == [tokenizer.bos_token_id] + whole
    assert stats.bytes_read == len(text.encode()) and stats.replaced == 0


def test_safe_cut_only_before_a_word():
    assert safe_cut("one two") == 3
    assert safe_cut("one  two") == 0  # a run of spaces may merge differently
    assert safe_cut("nospace") == 0
    assert safe_cut("end ") == 0


def test_max_tokens_and_skip(tokenizer):
    text = essays_text(max_chars=5000)
    all_ids = flat(stream_tokens(tokenizer, io.BytesIO(text.encode()), ReadStats()))
    capped = flat(stream_tokens(tokenizer, io.BytesIO(text.encode()), ReadStats(), max_tokens=100))
    assert capped == all_ids[:101]  # BOS + 100
    assert flat(skip([[1, 2, 3], [4, 5], [6]], 4)) == [5, 6]
    assert flat(limit([[1, 2, 3], [4, 5]], 4)) == [1, 2, 3, 4]


@pytest.mark.parametrize("data", [b"", b"  \n\n\t ", b"\x00\x01\x02binary\x00"])
def test_empty_or_binary_input_is_refused(tokenizer, data):
    with pytest.raises(InputError):
        list(stream_tokens(tokenizer, io.BytesIO(data), ReadStats()))


def test_invalid_utf8_is_replaced_and_counted(tokenizer):
    stats = ReadStats()
    ids = flat(stream_tokens(tokenizer, io.BytesIO(b"caf\xe9 ok \xff done."), stats))
    assert stats.replaced == 2 and len(ids) > 3


def test_separators_on_the_real_tokenizer(tokenizer):
    mask = separator_mask(tokenizer)
    for text in ["\n\n", " .", " ,", "...", " \n", " ?"]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{text!r} is expected to be one merged token"
        assert mask[ids[0]], f"{text!r} should be a separator"
    for text in ["Hello", " world", " the"]:
        assert not mask[tokenizer.encode(text, add_special_tokens=False)[0]]
    assert not mask[tokenizer.bos_token_id]


@pytest.mark.real
@torch.inference_mode()
def test_smollm2_perplexity_on_the_essays_is_sane(real_model):
    tok = real_model.tokenizer
    ids = [tok.bos_token_id] + tok(essays_text(max_chars=4000), add_special_tokens=False)[
        "input_ids"
    ][:700]
    engine = StreamEngine(real_model.model, StreamConfig(), separator_mask(tok))
    stats = list(engine.run([ids]))
    nll = torch.cat([s.nll for s in stats])
    assert nll.numel() == len(ids) - 1
    assert max(s.cache_peak for s in stats) == 324  # compressions happened
    assert math.exp(nll.mean()) < 100
