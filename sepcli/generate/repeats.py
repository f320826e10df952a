"""Stopping a generation that loops: the last tokens are one span said over and over.

Greedy decoding of a small model falls into loops ("a canvas of color, a canvas of color, ...",
"The license is version 1." six times) and writes them until the token limit. The rule, the same
for every decoder that uses it (`chat` and `ask` by default, `generate` with --stop-repeats):

    stop once the last ``times * L`` generated tokens are one span of ``L`` tokens repeated
    ``times`` times in a row, for some ``L`` with ``MIN_SPAN <= L <= MAX_SPAN``.

A loop shorter than ``MIN_SPAN`` (one word, "no no no ...") is caught as a multiple of its period
(``L = 8`` for a one-token loop: after 24 tokens with ``times = 3``). Only generated tokens count,
never the prompt; the tokens of the loop are already written when it is found (they are not
taken back). Spans shorter than ``MIN_SPAN`` repeated three times are common in real text (a
table rule ``|---|---|``, "ha ha ha"), hence the floor.

:class:`RepeatGuard` checks it incrementally in O(MAX_SPAN) per token: for every span length
``L`` it keeps how many tokens in a row equalled the token ``L`` before them; a run of
``(times - 1) * L`` means the last ``times * L`` tokens have period ``L``.
"""

from __future__ import annotations

from sepcli.errors import ConfigError

MIN_SPAN = 8
MAX_SPAN = 256
DEFAULT_TIMES = 3  # `chat` and `ask`; `generate` is off (0) unless asked


def check_times(times: int) -> int:
    """``times`` if it is 0 (off) or >= 2, else ConfigError."""
    if isinstance(times, bool) or not isinstance(times, int) or times < 0 or times == 1:
        raise ConfigError(f"--stop-repeats must be 0 (off) or >= 2, got {times!r}")
    return times


class RepeatGuard:
    """``guard.push(token) -> True`` once the tokens pushed so far end in a loop (see the module
    docstring). ``times = 0`` never stops."""

    def __init__(self, times: int, min_span: int = MIN_SPAN, max_span: int = MAX_SPAN):
        self.times = check_times(times)
        self.min_span, self.max_span = min_span, max_span
        self._ring = [-1] * max_span  # the last max_span tokens, token i at i % max_span
        self._runs = [0] * (max_span + 1)  # _runs[L]: tokens in a row equal to the one L back
        self.count = 0

    def push(self, token: int) -> bool:
        if not self.times:
            return False
        i, ring, runs, m = self.count, self._ring, self._runs, self.max_span
        need = self.times - 1
        hit = False
        for span in range(self.min_span, min(m, i) + 1):
            if ring[(i - span) % m] == token:  # read before token i is written (span = m)
                runs[span] += 1
                hit = hit or runs[span] >= need * span
            else:
                runs[span] = 0
        ring[i % m] = token
        self.count = i + 1
        return hit
