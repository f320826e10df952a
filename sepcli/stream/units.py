"""Per-line (or per-paragraph) surprisal of a stream: which tokens belong to which unit, and a
unit's figures once all its tokens are scored.

A unit's tokens are its text plus the line break before it: predicting the break is predicting
that a new line starts, and it lets a line be reported as soon as the line break after it has
arrived (the tokens of that break belong to the next line). Paragraphs are separated by a blank
line (a run of whitespace with two or more line breaks).

Tokens are assigned by character offsets (the tokenizer's offset mapping): a token belongs to
the unit the text is in at the token's last character. The context is the whole stream: a unit
is scored given everything before it, through the ring as in a normal stream.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from sepcli.stream.config import PER_UNITS
from sepcli.stream.reader import newline_cut_is_safe, start_token, text_blocks_ahead


@dataclass
class _Unit:
    number: int
    tokens: int = 0
    nll_sum: float = 0.0
    max_nll: float | None = None
    text: list[str] = field(default_factory=list)


class UnitTracker:
    """Follows the characters of the stream, block by block, and the NLL of its tokens.

    ``split(text, offsets)`` -> the unit number of each token of a block (offsets: [start, end)
    character spans of the block's tokens); ``scored(nll)`` adds the NLL of tokens in stream
    order; ``done(final)`` yields the figures of every unit that is complete.
    """

    def __init__(self, unit: str, keep_text: bool = False):
        if unit not in PER_UNITS:
            raise ValueError(f"unit must be one of {PER_UNITS}, got {unit!r}")
        self.unit, self.keep_text = unit, keep_text
        self.current = 1  # the unit the next character belongs to
        self._newlines = 0  # line breaks in the current whitespace run (paragraph breaks)
        self._units: dict[int, _Unit] = {1: _Unit(1)}
        self._owner: deque[int] = deque()  # unit of each token fed but not yet scored
        self._emitted = 0

    def _advance(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._newlines += 1
                if self.unit == "line" or self._newlines == 2:
                    self.current += 1
                    self._units[self.current] = _Unit(self.current)
                    continue
            elif not ch.isspace():
                self._newlines = 0
            if self.keep_text:
                self._units[self.current].text.append(ch)

    def split(self, text: str, offsets: list[tuple[int, int]]) -> list[int]:
        """Walk ``text`` (one block) and return the unit of each of its tokens."""
        owners, pos = [], 0
        for _, end in offsets:
            if end > pos:
                self._advance(text[pos:end])
                pos = end
            owners.append(self.current)
        if pos < len(text):
            self._advance(text[pos:])
        self._owner.extend(owners)
        return owners

    def lookahead(self, text: str) -> bool:
        """Whether the text that follows (not yet tokenized) ends the current unit."""
        run = len(text) - len(text.lstrip())
        breaks = text[:run].count("\n")
        return breaks >= (1 if self.unit == "line" else 2 - self._newlines)

    def scored(self, nll: Iterable[float]) -> None:
        for value in nll:
            unit = self._units[self._owner.popleft()]
            unit.tokens += 1
            unit.nll_sum += value
            unit.max_nll = value if unit.max_nll is None else max(unit.max_nll, value)

    def done(self, complete_through: int) -> Iterator[dict]:
        """Records of units up to ``complete_through`` not yet reported, in order."""
        waiting = self._owner[0] if self._owner else None
        while self._emitted < complete_through:
            number = self._emitted + 1
            if waiting is not None and waiting <= number:
                return  # a token of this unit is fed but not scored yet
            unit = self._units.pop(number)
            self._emitted = number
            record = {
                self.unit: number,
                "tokens": unit.tokens,
                "ppl": _exp(unit.nll_sum / unit.tokens) if unit.tokens else None,
                "max_nll": None if unit.max_nll is None else round(unit.max_nll, 4),
            }
            if self.keep_text:
                text = "".join(unit.text)
                record["text"] = text.rstrip("\r") if self.unit == "line" else text.strip()
            yield record


def _exp(x: float) -> float:
    from sepcli.stream.metrics import perplexity  # metrics imports the engine: late

    return round(perplexity(x), 4)


def stream_units(
    engine, tokenizer, source, stats, tracker: UnitTracker, on_chunk, stop
) -> Iterator[dict]:
    """Stream ``source`` (binary) through ``engine`` and yield a record per unit as soon as it
    is complete and scored. ``on_chunk(ChunkStats)`` sees every chunk (running figures);
    ``stop()`` is asked after each block (True: stop there).

    Blocks are fed as they arrive, in pieces of at most ``config.chunk`` tokens (any chunking
    gives the same scores), so a line that arrives alone is scored at once."""
    head = start_token(tokenizer)
    cut_lines = newline_cut_is_safe(tokenizer)
    chunk = engine.config.chunk
    for text, ahead in text_blocks_ahead(source, stats, lines=cut_lines):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        tracker.split(text, enc["offset_mapping"])
        ids, head = head + enc["input_ids"], []
        for start in range(0, len(ids), chunk):
            piece = engine.feed(ids[start : start + chunk])
            on_chunk(piece)
            tracker.scored(piece.nll.tolist())
        through = tracker.current if tracker.lookahead(ahead) else tracker.current - 1
        yield from tracker.done(through)
        if stop():
            return
    yield from tracker.done(tracker.current)
