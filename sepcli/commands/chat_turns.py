"""User turns for the non-interactive `chat`: one per line, plain text or ``{"user": "..."}``.

Lines are read as bytes and decoded as UTF-8 with undecodable bytes replaced (and counted); a
malformed JSON line is an :class:`InputError` that names its line number. Blank lines are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from sepcli.errors import InputError
from sepcli.stream.reader import ReadStats, open_input, refuse_binary


def parse_line(raw: bytes, lineno: int, where: str, stats: ReadStats) -> str | None:
    """One input line -> the user's message (None for a blank line)."""
    text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
    stats.replaced += text.count("\ufffd")
    if not text.strip():
        return None
    if not text.lstrip().startswith("{"):
        return text
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where} line {lineno}: not valid JSON ({exc.msg})") from None
    user = obj.get("user") if isinstance(obj, dict) else None
    if not isinstance(user, str) or not user.strip():
        raise InputError(f'{where} line {lineno}: expected {{"user": "non-empty text"}}')
    return user


def read_turns(lines: Iterable[bytes], where: str, stats: ReadStats) -> Iterator[str]:
    """The user messages of ``lines`` in order, checked as they are read."""
    for lineno, raw in enumerate(lines, start=1):
        if lineno == 1:
            refuse_binary(raw, where)
        user = parse_line(raw, lineno, where, stats)
        if user is not None:
            yield user


def load_turns_file(path: str, stats: ReadStats) -> list[str]:
    """Every turn of a ``--turns`` file, all checked before the model loads."""
    with open_input(path) as source:  # the usual one-line errors: missing, directory, unreadable
        data = source.read()
    turns = list(read_turns(data.splitlines(keepends=True), f"--turns {path}", stats))
    if not turns:
        raise InputError(f"--turns {path} has no turns")
    return turns
