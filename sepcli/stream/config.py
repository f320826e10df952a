"""What a streaming run keeps in its KV cache, and how many tokens it feeds per forward.

The regions follow SepLLM (arXiv 2412.12094, streaming setting): ``init`` attention-sink tokens,
up to ``sep`` separator tokens compressed out of older text, a local ``window`` of the newest
tokens, and a hard ``capacity`` the cache never exceeds. The other methods reuse the same
fields at the same budget: ``streamingllm`` keeps ``init`` sinks + ``capacity - init`` recent
tokens, ``window`` the ``capacity`` most recent, ``full`` everything up to the model's context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sepcli.errors import ConfigError

METHODS = ("sepllm", "streamingllm", "window", "full")
# Tokens per forward when not given (capped by the window). Larger chunks run bigger matmuls;
# bench/stream.py throughput measured 64/128/224 side by side, and 224 was the fastest.
DEFAULT_CHUNK = 224


@dataclass(frozen=True)
class StreamConfig:
    """Cache budget and chunking of one streaming run (defaults: the official SepLLM streaming
    settings, init 4, sep 64, window 224, capacity 324).

    Attributes
    ----------
    method : which tokens the cache keeps (one of ``METHODS``).
    init : the first tokens of the stream, kept forever (attention sinks).
    sep : most separator tokens kept from text older than the local window.
    window : the newest tokens, always kept (sepllm only).
    capacity : ring slots: most tokens in the cache, including the token being processed (a
        token attends to at most ``capacity`` entries, itself included). The official loops
        the paper's numbers come from attend to ``c`` cached entries *plus* the token and evict
        afterwards, so their ``c`` is ``capacity - 1`` (:attr:`paper_c`): ``--capacity c + 1``
        reproduces them exactly (docs/stream.md). ``full`` ignores it and uses the model's
        context length.
    chunk : tokens per forward pass, at most ``window``; None picks ``min(DEFAULT_CHUNK, window)``.
        1 is the paper's token-by-token evaluation; every method gives the same result for any
        chunk (up to float rounding; see docs/stream.md), larger chunks are faster.
    """

    method: str = "sepllm"
    init: int = 4
    sep: int = 64
    window: int = 224
    capacity: int = 324
    chunk: int | None = None

    def __post_init__(self) -> None:
        if (
            self.chunk is None
            and isinstance(self.window, int)
            and not isinstance(self.window, bool)
        ):
            object.__setattr__(self, "chunk", max(1, min(DEFAULT_CHUNK, self.window)))
        if self.method not in METHODS:
            raise ConfigError(f"unknown method {self.method!r}: use one of {', '.join(METHODS)}")
        for name in ("init", "sep", "window", "capacity", "chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
        for name in ("init", "sep"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("window", "capacity", "chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.chunk > self.window:
            raise ConfigError(f"--chunk {self.chunk} is larger than --window {self.window}")
        if self.method == "sepllm" and self.capacity <= self.init + self.sep + self.window:
            raise ConfigError(
                f"--capacity {self.capacity} must be larger than init + sep + window = "
                f"{self.init} + {self.sep} + {self.window} = {self.init + self.sep + self.window}"
            )
        if self.method == "streamingllm" and self.capacity <= self.init:
            raise ConfigError(
                f"--capacity {self.capacity} leaves no room for recent tokens next to "
                f"{self.init} sink tokens"
            )

    @property
    def paper_c(self) -> int | None:
        """The official loops' (and the paper's) c that this capacity reproduces exactly:
        ``capacity - 1``; None for ``full``."""
        return None if self.method == "full" else self.capacity - 1

    def to_dict(self) -> dict:
        return asdict(self)

    def resolved(self, ring_slots: int) -> dict:
        """The config as a run records it (JSON output): the fields, the ring's actual slots
        (the model's context for ``full``) and the paper's equivalent c."""
        return {**self.to_dict(), "capacity": ring_slots, "paper_c": self.paper_c}
