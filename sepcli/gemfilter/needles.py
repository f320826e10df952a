"""Synthetic needle-in-a-haystack cases on real text (the bundled Paul Graham essays).

A needle is one invented sentence with a question whose answer is a single word or number;
it is inserted at a sentence boundary at a chosen depth of a haystack cut to a chosen number
of tokens. Shared by ``sepcli calibrate``, the tests and the ``bench/niah_*.py`` benches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sepcli.texts import essays_text


@dataclass(frozen=True)
class Needle:
    sentence: str
    question: str
    answer: str  # found case-insensitively in the model's answer = correct


NEEDLES = (
    Needle(
        "The best thing to do in San Francisco is to eat a sandwich and sit in Dolores Park on a sunny day.",
        "What is the best thing to do in San Francisco?",
        "Dolores Park",
    ),
    Needle(
        "The secret password for the old library vault is 'marmalade'.",
        "What is the secret password for the old library vault?",
        "marmalade",
    ),
    Needle(
        "The special magic number that Rebecca wrote on the blackboard is 7342.",
        "What is the special magic number that Rebecca wrote on the blackboard?",
        "7342",
    ),
    Needle(
        "The capital of the invented island nation of Zorbia is a harbour town called Lunaville.",
        "What is the capital of Zorbia?",
        "Lunaville",
    ),
    Needle(
        "Professor Okafor's favourite fruit is the green mango from her grandmother's garden.",
        "What is Professor Okafor's favourite fruit?",
        "mango",
    ),
    Needle(
        "The annual kite festival in the village of Brenmoor always takes place in October.",
        "In which month does the kite festival in Brenmoor take place?",
        "October",
    ),
)


@dataclass(frozen=True)
class NeedleCase:
    """A document with one needle; ``needle_chars`` is the needle's [start, end) in ``document``."""

    document: str
    needle: Needle
    depth: float
    length_tokens: int
    needle_chars: tuple[int, int]

    @property
    def question(self) -> str:
        return self.needle.question

    def is_correct(self, answer: str) -> bool:
        return self.needle.answer.lower() in answer.lower()

    def recall(self, prompt, kept: Iterable[int]) -> float:
        """Fraction of the needle's tokens in ``prompt`` (built from this case) that are among
        the ``kept`` prompt positions."""
        needle = prompt.tokens_of_chars(*self.needle_chars)
        kept = set(kept)
        return sum(p in kept for p in needle) / max(1, len(needle))


_HAY_CACHE: dict[int, str] = {}


def _haystack(chars: int) -> str:
    if chars not in _HAY_CACHE:
        _HAY_CACHE[chars] = essays_text(max_chars=chars)
    return _HAY_CACHE[chars]


def make_case(
    tokenizer, needle: Needle, length_tokens: int, depth: float, offset_chars: int = 0
) -> NeedleCase:
    """Haystack of ~``length_tokens`` tokens (needle included) with the needle at ``depth`` (0..1).

    offset_chars: where in the essays the haystack starts (different needles can use different text).
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must lie in [0, 1], got {depth}")
    need = len(tokenizer(needle.sentence, add_special_tokens=False)["input_ids"]) + 2
    budget = max(8, length_tokens - need)
    raw = _haystack(offset_chars + budget * 8)[offset_chars:]
    enc = tokenizer(raw, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    hay = raw[: offsets[min(budget, len(offsets)) - 1][1]]
    at = int(len(hay) * depth)
    if 0 < at < len(hay):
        cut = hay.rfind(". ", 0, at)  # insert at a sentence boundary
        at = cut + 2 if cut >= 0 else 0
    before, after = hay[:at].rstrip(), hay[at:].lstrip()
    start = len(before) + (1 if before else 0)
    document = (before + " " if before else "") + needle.sentence + (" " + after if after else "")
    return NeedleCase(document, needle, depth, length_tokens, (start, start + len(needle.sentence)))


def make_grid(tokenizer, lengths, depths, needles=NEEDLES) -> list[NeedleCase]:
    """All (length, depth, needle) combinations; each needle sits in a different stretch of text."""
    return [
        make_case(tokenizer, nd, length, depth, offset_chars=j * 40_000)
        for length in lengths
        for depth in depths
        for j, nd in enumerate(needles)
    ]
