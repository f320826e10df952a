"""SepLLM (Chen et al., arXiv 2412.12094, streaming setting): initial tokens + separators + a
past window + a local window; when the cache is full, the past window is compressed to its
separators."""

from __future__ import annotations

import torch

from sepcli.errors import ConfigError
from sepcli.stream.methods.base import Method
from sepcli.stream.ring import RingKV


class SepLLM(Method):
    """Nothing is evicted until the cache is full, and then only at a compression: a chunk is
    therefore cut at compression points, which makes any chunk size exactly equal to feeding
    one token at a time."""

    name = "sepllm"
    reads = ("init", "sep", "window", "capacity")

    @classmethod
    def check(cls, config) -> None:
        budget = config.init + config.sep + config.window
        if config.capacity <= budget:
            raise ConfigError(
                f"--capacity {config.capacity} must be larger than init + sep + window = "
                f"{config.init} + {config.sep} + {config.window} = {budget}"
            )

    @classmethod
    def max_chunk(cls, config) -> tuple[int, str]:
        return config.window, "--window"

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
