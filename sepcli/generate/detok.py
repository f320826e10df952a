"""Token ids -> text as they are generated: incremental detokenisation and stop strings.

Decoding each new token alone is wrong (a character split over two byte tokens, a SentencePiece
word whose leading space depends on what precedes it); decoding the whole text each time is
right but costs O(n) per token, O(n^2) for a long generation. :class:`Detokenizer` decodes a
short window instead: the text of ``ids[prefix:]`` minus that of ``ids[prefix:read]``, where
``read`` is where the text shown so far ends and ``prefix`` a few tokens before it (the same
scheme as vLLM's and text-generation-inference's detokenisers). A piece that ends in an
unfinished UTF-8 sequence is held back until the next token completes it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence


class Detokenizer:
    """``push(token_id) -> new text`` (possibly ""); the pieces join to ``decode(all ids)``."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip = skip_special_tokens
        self._ids: list[int] = []  # ids from the window's start on (older ones are dropped)
        self._prefix = 0  # window start in _ids: decoded only as context
        self._read = 0  # end of the text already returned

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token: int) -> str:
        self._ids.append(token)
        shown = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        if len(text) <= len(shown) or text.endswith("\ufffd"):
            return ""  # nothing new yet (a special token, or half a character)
        piece = text[len(shown) :]
        # the next window starts where this one's new text started
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)
        return piece


def stream_text(tokenizer, token_ids: Iterable[int]) -> Iterator[tuple[str, int]]:
    """``(new text, id)`` for each id of a stream (special tokens skipped)."""
    detok = Detokenizer(tokenizer)
    for tok in token_ids:
        yield detok.push(tok), tok


class StopStrings:
    """Cuts generated text at the first stop string; text that might begin one is held back.

    ``push(piece) -> (text safe to show, stopped)``; once stopped, the text after the stop
    string is dropped. ``flush()`` returns what was held back when the run ends otherwise.
    """

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.tail = ""  # the stop string and what followed it in the same token

    def push(self, piece: str) -> tuple[str, bool]:
        if not self.stops:
            return piece, False
        text = self._held + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            cut = min(hits)
            self._held, self.stopped, self.tail = "", True, text[cut:]
            return text[:cut], True
        keep = max((_overlap(text, s) for s in self.stops), default=0)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _overlap(text: str, stop: str) -> int:
    """Length of the longest end of ``text`` that is a start of ``stop`` (shorter than it)."""
    for n in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
