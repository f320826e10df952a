"""Full attention: keep every token, up to the model's context, and refuse to go past it."""

from __future__ import annotations

from sepcli.errors import ConfigError, ContextLimitError
from sepcli.stream.methods.base import Method
from sepcli.stream.ring import RingKV


class Full(Method):
    """The ring has one slot per position of the model's context; ``capacity`` is not read."""

    name = "full"
    reads = ()

    def ring_slots(self, context: int) -> int:
        if context <= 0:
            raise ConfigError(
                "method 'full' needs the model's context length, and the config has none"
            )
        self.capacity = context
        return context

    @property
    def limit(self) -> int:
        return self.capacity

    def make_room(self, ring: RingKV, want: int) -> int:
        if ring.used + want > self.limit:
            raise ContextLimitError(
                f"method 'full' keeps every token and the stream is longer than the model's "
                f"context of {self.capacity} tokens; use --method sepllm (or --max-tokens "
                f"{self.capacity})"
            )
        return want
