"""Running numbers of a stream: perplexity (whole run and recent tokens), speed, cache, memory."""

from __future__ import annotations

import math
import time
from collections import deque

from sepcli.memory import rss_mb
from sepcli.stream.engine import ChunkStats

RECENT_TOKENS = 1024


class RunMetrics:
    """Accumulates :class:`ChunkStats`; ``snapshot()`` gives the numbers the CLI reports.

    ``tokens`` counts scored tokens (every token but the stream's first). Speed counts the
    tokens processed in this process only, so a resumed run reports its own speed.
    """

    def __init__(self, capacity: int, recent: int = RECENT_TOKENS):
        self.capacity = capacity
        self.recent = recent
        self.tokens = 0
        self.nll_sum = 0.0
        self.cache_used = 0
        self._window: deque[tuple[int, float]] = deque()  # (scored, nll_sum) of recent chunks
        self._window_tokens = 0
        self._window_nll = 0.0
        self._session_tokens = 0
        self._start = time.perf_counter()

    def update(self, chunk: ChunkStats) -> None:
        self.tokens += chunk.scored
        self.nll_sum += chunk.nll_sum
        self.cache_used = chunk.cache_used
        self._session_tokens += chunk.tokens
        self._push(chunk.scored, chunk.nll_sum)

    def _push(self, n: int, nll: float) -> None:
        if n == 0:
            return
        self._window.append((n, nll))
        self._window_tokens += n
        self._window_nll += nll
        while self._window_tokens - self._window[0][0] >= self.recent:
            old_n, old_nll = self._window.popleft()
            self._window_tokens -= old_n
            self._window_nll -= old_nll

    @property
    def ppl(self) -> float:
        return perplexity(self.nll_sum / self.tokens) if self.tokens else float("nan")

    @property
    def recent_ppl(self) -> float:
        return (
            perplexity(self._window_nll / self._window_tokens)
            if self._window_tokens
            else float("nan")
        )

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._start

    @property
    def tok_per_s(self) -> float:
        elapsed = self.elapsed_s
        return self._session_tokens / elapsed if elapsed > 0 else 0.0

    def snapshot(self) -> dict:
        return {
            "tokens": self.tokens,
            "ppl": round_ppl(self.ppl),
            "recent_ppl": round_ppl(self.recent_ppl),
            "tok_per_s": round(self.tok_per_s, 1),
            "cache_used": self.cache_used,
            "cache_capacity": self.capacity,
            "elapsed_s": round(self.elapsed_s, 2),
            "rss_mb": round(rss_mb(), 1),
        }

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "nll_sum": self.nll_sum,
            "cache_used": self.cache_used,
            "window": list(self._window),
        }

    def load_state_dict(self, state: dict) -> None:
        self.tokens = int(state["tokens"])
        self.nll_sum = float(state["nll_sum"])
        self.cache_used = int(state["cache_used"])
        self._window.clear()
        self._window_tokens, self._window_nll = 0, 0.0
        for n, nll in state["window"]:
            self._push(int(n), float(nll))


MAX_NLL = 700.0  # math.exp overflows past ~709.78: a perplexity is reported as at most e^700


def perplexity(mean_nll: float) -> float:
    """exp(mean NLL), capped at e^MAX_NLL (a random-weight model's NLL can exceed what a float
    holds; the cap keeps JSON output finite)."""
    return math.exp(min(mean_nll, MAX_NLL))


def round_ppl(x: float | None) -> float | None:
    """A perplexity as sepcli reports it: 4 decimals (None for NaN or None)."""
    return None if x is None or math.isnan(x) else round(x, 4)
