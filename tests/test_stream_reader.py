"""Incremental reading/tokenising, separator detection on the real tokenizer, and one real-model
perplexity check."""

from __future__ import annotations

import io
import math
import random

import pytest
import torch

from sepcli.errors import InputError
from sepcli.separators import separator_mask
from sepcli.stream.checkpoint import TokenDigest, resume_from
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.reader import ReadStats, limit, safe_cut, stream_tokens
from sepcli.texts import essays_text

from helpers import fifo_with_writer


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


def test_max_tokens(tokenizer):
    text = essays_text(max_chars=5000)
    all_ids = flat(stream_tokens(tokenizer, io.BytesIO(text.encode()), ReadStats()))
    capped = flat(stream_tokens(tokenizer, io.BytesIO(text.encode()), ReadStats(), max_tokens=100))
    assert capped == all_ids[:101]  # BOS + 100
    assert flat(limit([[1, 2, 3], [4, 5]], 4)) == [1, 2, 3, 4]


def _cut(ids: list[int], rng: random.Random) -> list[list[int]]:
    """``ids`` in random pieces (empty ones included)."""
    out, i = [], 0
    while i < len(ids):
        n = rng.randint(0, 9)
        out.append(ids[i : i + n])
        i += n
    return out


def _digest(pieces, group: int = 5) -> TokenDigest:
    d = TokenDigest()
    d.GROUP = group  # small groups: the chaining runs many times on a short stream
    for piece in pieces:
        d.update(piece)
    return d


def test_token_digest_depends_on_the_ids_not_on_the_cuts():
    rng = random.Random(3)
    ids = [rng.randrange(50_000) for _ in range(103)]
    whole = _digest([ids]).summary()
    for _ in range(20):
        assert _digest(_cut(ids, rng)).summary() == whole
    assert whole["tokens"] == 103
    for i in (0, 51, 102):  # one id changed anywhere, or two swapped
        changed = ids.copy()
        changed[i] += 1
        assert _digest([changed]).hexdigest() != whole["sha256"]
    swapped = ids.copy()
    swapped[10], swapped[11] = swapped[11], swapped[10]
    assert _digest([swapped]).hexdigest() != whole["sha256"]
    assert _digest([ids[:-1]]).hexdigest() != whole["sha256"]


def test_resume_from_checks_the_fed_tokens_and_returns_the_rest():
    rng = random.Random(4)
    ids = [rng.randrange(1000) for _ in range(60)]
    for n in (0, 1, 23, 60):
        saved = TokenDigest()
        saved.update(ids[:n])
        digest, rest = resume_from(_cut(ids, rng), saved.summary(), n)
        assert flat(rest) == ids[n:] and digest.summary() == saved.summary()
        digest.update(ids[n:])  # the resumed run goes on hashing from there
        whole = TokenDigest()
        whole.update(ids)
        assert digest.summary() == whole.summary()
    saved = TokenDigest()
    saved.update(ids[:30])
    other = ids.copy()
    other[7] += 1
    with pytest.raises(InputError, match="not the ones the checkpoint"):
        resume_from([other], saved.summary(), 30)
    with pytest.raises(InputError, match="ends after 20 tokens, before the checkpoint's 30"):
        resume_from([ids[:20]], saved.summary(), 30)
    _, rest = resume_from([other], None, 30)  # an older checkpoint, with no digest: not checked
    assert flat(rest) == other[30:]


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (b"  \n\n\t ", "empty"),
        (b"\x00\x01\x02binary\x00", "binary"),
        ("UTF-16 text, with a BOM.".encode("utf-16"), "UTF-16"),
    ],
)
def test_empty_binary_or_utf16_input_is_refused(tokenizer, data, match):
    with pytest.raises(InputError, match=match):
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


# The reader rule (sepcli/stream/reader.py): what is text and what is refused.
FRENCH = "Le café est très bon, déjà prêt à côté de la fenêtre; où est l'élève? " * 40


@pytest.mark.parametrize(
    "data, why",
    [
        (b"\x7fELF\x02\x01\x01\x00" + b"x" * 100, "looks binary"),
        (b"plain text" * 900 + b"\x00", None),  # a NUL past the first 8 KiB is not looked at
        (b"\xff\xfeh\x00i\x00", "UTF-16"),
        (("Привет, как дела? " * 50).encode("cp1251"), "not UTF-8 text"),
        (("日本語のテキストです。" * 50).encode("shift_jis"), "not UTF-8 text"),
        (FRENCH.encode("latin-1"), None),  # a few stray bytes: replaced and warned, not refused
        (FRENCH.encode(), None),
        ("日本語".encode() * 2730 + "日".encode()[:2], None),  # a character cut at 8 KiB
    ],
)
def test_refuse_binary_is_the_documented_rule(data, why):
    from sepcli.stream.reader import refuse_binary

    if why is None:
        refuse_binary(data, "x")
    else:
        with pytest.raises(InputError, match=why):
            refuse_binary(data, "x")


def test_check_text_file_reads_only_what_it_needs(tmp_path):
    import gzip

    from sepcli.stream.reader import BLOCK_BYTES, check_text_file

    spaces = tmp_path / "late.txt"  # text only after three blocks of whitespace
    spaces.write_bytes(b" \n" * (3 * BLOCK_BYTES) + b"word")
    check_text_file(str(spaces))
    blank = tmp_path / "blank.txt"
    blank.write_bytes(b" \n\t" * 10000)
    with pytest.raises(InputError, match="is empty"):
        check_text_file(str(blank))
    check_text_file(str(blank), allow_empty=True)
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"text": "hi"}\n'))
    check_text_file(str(packed), gz=True)
    with pytest.raises(InputError, match="looks binary"):  # read as text, the gzip is binary
        check_text_file(str(packed))
    fake = tmp_path / "fake.gz"
    fake.write_text("not gzip at all")
    with pytest.raises(InputError, match="not a valid gzip"):
        check_text_file(str(fake), gz=True)
    with pytest.raises(InputError, match="is a directory"):
        check_text_file(str(tmp_path))
    check_text_file("-")  # stdin: checked as it is read


def test_check_text_file_leaves_a_pipe_to_the_reader(tmp_path):
    """A named pipe (or `<(zcat a.gz)`) can be read once: the check must not read it (it would
    wait for the writer and use up the text the command then waits for in vain)."""
    import threading

    from sepcli.stream.reader import check_text_file, read_text

    fifo, _ = fifo_with_writer(tmp_path, "Boats came home.")
    got = []

    def check_then_read():
        check_text_file(str(fifo))
        got.append(read_text(str(fifo)))

    run = threading.Thread(target=check_then_read, daemon=True)
    run.start()
    run.join(timeout=30)
    assert got == [("Boats came home.", 0)], "the check read the pipe: the reader got nothing"
