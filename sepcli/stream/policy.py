"""Which tokens a method keeps: the keep/evict rules, on the ring's index tensors only.

Each policy answers one question before a piece of new tokens is processed: "up to ``want``
tokens are waiting; evict what must go and say how many may be written now". The storage
(:mod:`sepcli.stream.ring`) knows nothing of these rules, and these rules never touch K/V.
"""

from __future__ import annotations

import torch

from sepcli.errors import ContextLimitError
from sepcli.stream.config import StreamConfig
from sepcli.stream.ring import RingKV


class Policy:
    """Base class: ``make_room`` evicts and returns the piece length (1 <= n <= want)."""

    name = "?"

    def __init__(self, config: StreamConfig, capacity: int):
        self.config = config
        self.capacity = capacity

    def make_room(self, ring: RingKV, want: int) -> int:
        raise NotImplementedError


class SepLLMPolicy(Policy):
    """Initial + separators + past window + local window; compress the past window when full.

    Nothing is evicted until the cache is full, and then only at a compression: a piece is
    therefore cut at compression points, which makes any chunk size exactly equal to feeding
    one token at a time.
    """

    name = "sepllm"

    def make_room(self, ring: RingKV, want: int) -> int:
        room = self.capacity - ring.used
        if room == 0:
            self.compress(ring)
            room = self.capacity - ring.used
        return min(want, room)

    def compress(self, ring: RingKV) -> None:
        """Keep the ``init`` first tokens, the local window and the newest ``sep`` separators."""
        cfg = self.config
        kept = ring.kept_slots()  # (L,) in text order
        text = ring.text_idx[kept]
        middle = torch.ones_like(kept, dtype=torch.bool)
        middle &= text >= cfg.init  # initial tokens stay
        middle[max(0, kept.numel() - cfg.window) :] = False  # local window stays
        mid_slots = kept[middle]
        seps = mid_slots[ring.is_sep[mid_slots]]  # separator region + past window's separators
        keep_seps = seps[max(0, seps.numel() - cfg.sep) :]  # the newest `sep` (all if fewer)
        drop = torch.ones_like(mid_slots, dtype=torch.bool)
        drop[torch.isin(mid_slots, keep_seps)] = False
        ring.free(mid_slots[drop])


class StreamingLLMPolicy(Policy):
    """``init`` sink tokens + the most recent ``capacity - init`` tokens."""

    name = "streamingllm"

    def make_room(self, ring: RingKV, want: int) -> int:
        excess = ring.used + want - self.capacity
        if excess > 0:
            kept = ring.kept_slots()
            recent = kept[ring.text_idx[kept] >= self.config.init]  # non-sinks, oldest first
            ring.free(recent[:excess])
        return want


class WindowPolicy(Policy):
    """The most recent ``capacity`` tokens, no sinks."""

    name = "window"

    def make_room(self, ring: RingKV, want: int) -> int:
        excess = ring.used + want - self.capacity
        if excess > 0:
            ring.free(ring.kept_slots()[:excess])
        return want


class FullPolicy(Policy):
    """Keep everything; refuse to go past the model's context."""

    name = "full"

    def make_room(self, ring: RingKV, want: int) -> int:
        if ring.used + want > self.capacity:
            raise ContextLimitError(
                f"method 'full' keeps every token and the stream is longer than the model's "
                f"context of {self.capacity} tokens; use --method sepllm (or --max-tokens "
                f"{self.capacity})"
            )
        return want


POLICIES = {p.name: p for p in (SepLLMPolicy, StreamingLLMPolicy, WindowPolicy, FullPolicy)}


def make_policy(config: StreamConfig, capacity: int) -> Policy:
    return POLICIES[config.method](config, capacity)
