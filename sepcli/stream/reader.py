"""Text in, token ids out, a block at a time: memory does not grow with the input.

Bytes are read in fixed blocks (a file, or stdin for ``-``), decoded incrementally as UTF-8,
and cut into text blocks only where the tokenizer would split anyway: before a space that
starts a word (``"...end| word"``). Tokenising such blocks one by one gives the same ids as
tokenising the whole text at once for byte-level BPE tokenizers (GPT-2 style pre-tokenization
never joins a word to the space before the next word). A line with no such point for
``MAX_PENDING_CHARS`` is cut where it stands (one token boundary may then differ).

The reader rule, the same for every command that reads text (docs/stream.md, "Bad input"):

- a missing or unreadable path, or a directory, is an :class:`InputError`;
- binary data is refused: a NUL byte, or a UTF-16 byte-order mark, in the first 8 KiB;
- so is text in another encoding: more than a quarter of the characters of the first 8 KiB
  not decodable as UTF-8 (Latin-1 prose has a few per cent; a cp1251 or Shift-JIS file, most);
- stray invalid UTF-8 bytes elsewhere are replaced with U+FFFD and counted (the CLI warns);
- an input with no non-whitespace text is refused as empty.

A named file is checked by :func:`check_text_file` before any model loads (and before torch is
imported); stdin is checked as its first block arrives, so a slow pipe never delays the load.
"""

from __future__ import annotations

import codecs
import contextlib
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sepcli.errors import InputError

BLOCK_BYTES = 1 << 16
MAX_PENDING_CHARS = 1 << 20
BINARY_SNIFF_BYTES = 8192
# More than this share of the first BINARY_SNIFF_BYTES' characters undecodable: not UTF-8 text.
MAX_UNDECODABLE_SHARE = 0.25


def refuse_binary(head: bytes, where: str) -> None:
    """InputError unless the first ``BINARY_SNIFF_BYTES`` of an input read as UTF-8 text: no
    NUL byte, no UTF-16 byte-order mark, at most ``MAX_UNDECODABLE_SHARE`` undecodable."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputError(
            f"{where} is UTF-16 text: sepcli reads UTF-8 (convert it first, e.g. "
            "`iconv -f UTF-16 -t UTF-8`)"
        )
    head = head[:BINARY_SNIFF_BYTES]
    if b"\x00" in head:
        raise InputError(f"{where} looks binary (NUL bytes): sepcli reads UTF-8 text")
    # not final: a character cut by the end of the sniffed bytes is not held against the input
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    bad = text.count("\ufffd") - head.count("\ufffd".encode())
    if text and bad > MAX_UNDECODABLE_SHARE * len(text):
        raise InputError(
            f"{where} is not UTF-8 text ({bad} of the first {len(text)} characters undecodable): "
            "convert it first, e.g. `iconv -f LATIN1 -t UTF-8`"
        )


def check_path(path: str | Path, what: str = "") -> Path:
    """The first part of the reader rule for a named file: it exists and is not a directory.
    ``what`` names the option it came from in the message (``--resume``)."""
    p = Path(path).expanduser()
    label = f"{what} {path}" if what else str(path)
    if not p.exists():
        raise InputError(f"no such file: {label}")
    if p.is_dir():
        raise InputError(f"{label} is a directory, not a file")
    return p


def check_text_file(path: str, gz: bool = False, allow_empty: bool = False) -> None:
    """The whole reader rule for a named file, before any model loads: it exists, is not a
    directory, can be read, its start is UTF-8 text (:func:`refuse_binary`) and it holds some
    non-whitespace text (unless ``allow_empty``). ``gz``: the text is gzip-compressed. Reads
    only as far as the first non-whitespace text. ``-`` (stdin) and other pipes or devices
    (``<(zcat a.gz)``, a named pipe) are checked as they are read: reading them now would use up
    what the command is to read."""
    if path == "-":
        return
    import gzip
    import zlib

    p = check_path(path)
    if not p.is_file():
        return
    try:
        handle = gzip.open(p, "rb") if gz else open(p, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        with handle:
            head = handle.read(BINARY_SNIFF_BYTES)
            refuse_binary(head, path)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            block = head
            while block:
                text = decoder.decode(block)
                if text and not text.isspace():
                    return
                block = handle.read(BLOCK_BYTES)
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise InputError(f"{path} is not a valid gzip file ({exc})") from None
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not allow_empty:
        raise InputError(f"{path} is empty (no text)")


@dataclass
class ReadStats:
    """Counters the CLI reports: bytes read and U+FFFD characters produced."""

    bytes_read: int = 0
    replaced: int = 0


@contextlib.contextmanager
def open_input(path: str) -> Iterator[BinaryIO]:
    """``-`` -> stdin (binary, left open); otherwise the file, closed on exit. One-line errors
    for the usual mistakes are raised on entry, before anything else happens."""
    if path == "-":
        yield sys.stdin.buffer
        return
    p = check_path(path)
    try:
        handle = open(p, "rb")
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        yield handle


def read_text(path: str) -> tuple[str, int]:
    """The whole text of ``path`` (``-``: stdin; a pipe such as ``<(zcat a.gz)`` reads like a
    file) and how many U+FFFD characters undecodable bytes became, for inputs read at once
    (the GemFilter commands). Same refusals and wording as the streaming reader:
    :func:`open_input`, :func:`refuse_binary`, and an input with no text is empty."""
    with open_input(path) as stream:
        data = stream.read()
    refuse_binary(data, "the input" if path == "-" else path)
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())  # not U+FFFD already there
    if not text.strip():
        raise InputError(f"{'the input' if path == '-' else path} is empty (no text)")
    return text, replaced


def safe_cut(text: str) -> int:
    """Largest i > 0 where text[i] is a space between two non-space characters, else 0."""
    i = text.rfind(" ")
    while i > 0:
        if i + 1 < len(text) and not text[i - 1].isspace() and not text[i + 1].isspace():
            return i
        i = text.rfind(" ", 0, i)
    return 0


def line_cut(text: str) -> int:
    """Start of the whitespace run holding the last line break, if text comes before it, else 0:
    where a per-line stream may cut so that a line is tokenized once its line break arrives."""
    i = text.rfind("\n")
    while i > 0 and text[i - 1].isspace():
        i -= 1
    return max(i, 0)


def newline_cut_is_safe(tokenizer) -> bool:
    """Whether cutting text before a line break gives the same ids as the whole text (true for
    GPT-2 style pre-tokenization; not where punctuation merges with the newline after it)."""
    probes = ("end.\nNext", "a:\n  b", "x\n\n\ny", "one two\r\nthree", "(ok)\n- item")

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    return all(ids(p) == ids(p[: line_cut(p)]) + ids(p[line_cut(p) :]) for p in probes)


def text_blocks_ahead(
    stream: BinaryIO,
    stats: ReadStats,
    block_bytes: int = BLOCK_BYTES,
    lines: bool = False,
    allow_empty: bool = False,
) -> Iterator[tuple[str, str]]:
    """(block, the text read after it so far): decoded text in blocks that end at safe
    tokenization points; the last block gets the rest (and "" after it).

    Reads what is available (``read1``: a pipe is not waited on until a whole block fills), so
    text that arrives slowly is tokenized as it comes. ``lines``: also cut before a line break
    (see :func:`newline_cut_is_safe`), so a line is tokenized as soon as its break arrives.
    An input with no non-whitespace text is an InputError unless ``allow_empty``."""
    read = getattr(stream, "read1", stream.read)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending, first, non_space = "", True, False
    while True:
        raw = read(block_bytes)
        if first:
            refuse_binary(raw, "the input")
        first = False
        stats.bytes_read += len(raw)
        text = decoder.decode(raw, final=not raw)
        stats.replaced += text.count("\ufffd")
        non_space = non_space or not text.isspace() and bool(text)
        pending += text
        if not raw:
            break
        cut = max(safe_cut(pending), line_cut(pending) if lines else 0)
        if cut == 0 and len(pending) > MAX_PENDING_CHARS:
            cut = len(pending)
        if cut:
            yield pending[:cut], pending[cut:]
            pending = pending[cut:]
    if not non_space and not allow_empty:
        raise InputError("the input is empty (no text to score)")
    if pending:
        yield pending, ""


def text_blocks(
    stream: BinaryIO, stats: ReadStats, block_bytes: int = BLOCK_BYTES, allow_empty: bool = False
) -> Iterator[str]:
    """Decoded text in blocks that end at safe tokenization points; the last one gets the rest."""
    for block, _ in text_blocks_ahead(stream, stats, block_bytes, allow_empty=allow_empty):
        yield block


def token_blocks(tokenizer, texts: Iterable[str]) -> Iterator[list[int]]:
    """Token ids of each text block (no special tokens)."""
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        if ids:
            yield ids


def limit(blocks: Iterable[list[int]], max_tokens: int | None) -> Iterator[list[int]]:
    """At most ``max_tokens`` ids in total (None: no limit); stops reading once reached."""
    if max_tokens is None:
        yield from blocks
        return
    left = max_tokens
    for block in blocks:
        if left <= 0:
            return
        yield block[:left]
        left -= len(block)


def start_token(tokenizer) -> list[int]:
    """The token a stream starts with (BOS if the tokenizer has one): an attention sink that is
    always kept, and lets the first real token be scored."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return [] if bos is None else [bos]


def stream_tokens(
    tokenizer,
    stream: BinaryIO,
    stats: ReadStats,
    max_tokens: int | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Iterator[list[int]]:
    """The whole pipeline: start token + the first ``max_tokens`` ids of the text, in blocks."""
    blocks = limit(token_blocks(tokenizer, text_blocks(stream, stats, block_bytes)), max_tokens)
    first = next(blocks, None)  # empty or binary input fails here, before any model work
    if first is None:
        raise InputError("the input is empty (no text to score)")
    yield start_token(tokenizer) + first
    yield from blocks
