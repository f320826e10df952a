"""Input records for ``sepcli score`` and how each is written back with its score.

Three kinds of input, one :class:`Record` per document:

- **JSON lines** (``.jsonl``/``.ndjson``/``.json``, optionally ``.gz``, or ``-`` for stdin): one
  object per line, the document in ``field`` (dotted: ``meta.body``). Blank lines are not records.
  The record is written back as it came (its original text, byte for byte) with the score
  fields appended.
- **Lines** (``--lines``): every line of a text input is a document, ``{"line": n, "text": ...}``;
  an empty line is an empty document.
- **Text files** (any other path): the whole file is one document, ``{"file": path}``.

A record that cannot be read (malformed JSON, no such field, a field that is not a string)
carries an ``error`` instead of a text; the command decides whether that stops the run.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from sepcli.errors import InputError
from sepcli.score.scorer import DocScore
from sepcli.stream.metrics import round_ppl

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
REPLACEMENT = "\ufffd".encode()


@dataclass
class Record:
    """One document: where it came from, its text (None when unreadable) and what to write.

    source, line : input name and 1-based line (0 for a whole-file document).
    text : the document; None when ``error`` says why it could not be read.
    obj : the fields written back (a JSON line's object, or ``{"line": n, "text": ...}``).
    raw : a JSON line's original bytes (UTF-8; newline included): written back unchanged, with
        the scores appended, and never copied (a 20 MB record costs its bytes and its text).
    size : input bytes the record took (for progress).
    """

    source: str
    line: int
    text: str | None
    obj: dict | None = None
    raw: bytes | None = None
    error: str | None = None
    size: int = 0

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclass
class ReadCounts:
    """What reading found: U+FFFD characters put in for undecodable bytes."""

    replaced: int = 0
    bytes_read: int = 0


def is_jsonl(path: str) -> bool:
    name = path[:-3] if path.endswith(".gz") else path
    return path == "-" or name.endswith(JSONL_SUFFIXES)


def check_inputs(paths: list[str], ray: bool = False) -> None:
    """One-line InputError for a missing path, a directory (allowed for Ray, which reads the
    files in it) or stdin given twice (before any work)."""
    if paths.count("-") > 1:
        raise InputError("'-' (stdin) can be given only once")
    for path in paths:
        if path == "-":
            continue
        p = Path(path).expanduser()
        if not p.exists():
            raise InputError(f"no such file: {path}")
        if p.is_dir() and not ray:
            raise InputError(f"{path} is a directory, not a file")


def input_bytes(paths: list[str]) -> int | None:
    """Total size of the inputs (None when stdin is one: unknown)."""
    if "-" in paths:
        return None
    return sum(Path(p).expanduser().stat().st_size for p in paths)


@contextlib.contextmanager
def open_binary(path: str) -> Iterator[BinaryIO]:
    """``-`` -> stdin; ``.gz`` -> decompressed as read; else the file."""
    if path == "-":
        yield sys.stdin.buffer
        return
    try:
        handle = gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    with handle:
        try:
            yield handle
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise InputError(f"{path} is not a valid gzip file ({exc})") from None


def decode(raw: bytes, counts: ReadCounts) -> str:
    """UTF-8 text; undecodable bytes become U+FFFD and are counted."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        counts.replaced += text.count("\ufffd") - raw.count(REPLACEMENT)
        return text


def strip_newline(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line[:-1] if line.endswith("\n") else line


def field_of(obj, dotted: str) -> tuple[str | None, str | None]:
    """(text, None) or (None, why not) for the dotted field of a parsed JSON value."""
    if not isinstance(obj, dict):
        return None, f"the line is a JSON {type(obj).__name__}, not an object"
    value = obj
    for i, key in enumerate(dotted.split(".")):
        if not isinstance(value, dict) or key not in value:
            return None, f"no field {'.'.join(dotted.split('.')[: i + 1])!r} in the record"
        value = value[key]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return None, f"field {dotted!r} is {kind}, not a string"
    return value, None


def parse_json_line(
    line: bytes, dotted: str, counts: ReadCounts, source: str = "-", number: int = 0
) -> Record | None:
    """A JSON line (bytes, newline included or not) -> its Record; None for a blank line, which
    is not a record. Bytes that are not UTF-8 are replaced (and counted)."""
    if not line or line.isspace():
        return None
    try:
        obj = json.loads(line)
    except UnicodeDecodeError:
        line = decode(line, counts).encode()
        return parse_json_line(line, dotted, counts, source, number)
    except json.JSONDecodeError as exc:
        return Record(source, number, None, raw=line, error=f"malformed JSON ({exc.msg})")
    text, error = field_of(obj, dotted)
    return Record(
        source, number, text, obj=obj if isinstance(obj, dict) else None, raw=line, error=error
    )


def read_records(
    paths: list[str], dotted: str, lines: bool, counts: ReadCounts
) -> Iterator[Record]:
    """Every record of every input, in order."""
    for path in paths:
        with open_binary(path) as handle:
            if lines or is_jsonl(path):
                for number, raw in enumerate(handle, 1):
                    counts.bytes_read += len(raw)
                    if lines:
                        record = _line_record(raw, path, number, len(paths) > 1, counts)
                    else:
                        record = parse_json_line(raw, dotted, counts, path, number)
                    size = len(raw)
                    del raw  # while the record is out, hold only what it holds
                    if record is not None:
                        record.size = size
                        yield record
            else:
                raw = handle.read()
                counts.bytes_read += len(raw)
                yield Record(path, 0, decode(raw, counts), obj={"file": path}, size=len(raw))


def _line_record(raw: bytes, path: str, number: int, name_file: bool, counts) -> Record:
    body = strip_newline(decode(raw, counts))
    obj = {"line": number, "text": body}
    return Record(path, number, body, obj={"file": path, **obj} if name_file else obj)


def score_fields(score: DocScore, prefix: str) -> dict:
    return {
        f"{prefix}tokens": score.tokens,
        f"{prefix}nll": score.nll,
        f"{prefix}ppl": round_ppl(score.ppl),
    }


def render(record: Record, added: dict) -> list:
    """The output line of a record, as parts to write in order (bytes or memoryviews, no
    newline): its fields plus ``added`` (scores, or an error).

    A JSON line is written back as its original bytes up to the closing brace (a view, not a
    copy) and ``added`` after it, so its keys, order and formatting are kept and a huge record is
    never serialised again; when a key would repeat, the object is re-serialised."""
    obj = record.obj
    if obj is None:  # not a JSON object: nothing to add to (``added`` carries the raw text)
        return [json.dumps(added, ensure_ascii=False).encode()]
    tail = json.dumps(added, ensure_ascii=False)
    if record.raw is not None and obj and not added.keys() & obj.keys():
        end = record.raw.rfind(b"}")
        return [memoryview(record.raw)[:end], b", " + tail[1:].encode()]
    return [json.dumps({**obj, **added}, ensure_ascii=False).encode()]
