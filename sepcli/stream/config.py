"""What a streaming run keeps in its KV cache, and how many tokens it feeds per forward.

The regions follow SepLLM (arXiv 2412.12094, streaming setting): ``init`` attention-sink tokens,
up to ``sep`` separator tokens compressed out of older text, a local ``window`` of the newest
tokens, and a hard ``capacity`` the cache never exceeds. The other methods reuse the same
fields at the same budget: ``streamingllm`` keeps ``init`` sinks + ``capacity - init`` recent
tokens, ``window`` the ``capacity`` most recent, ``full`` everything up to the model's context.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from sepcli.errors import ConfigError
from sepcli.stream.methods import method_class

# Tokens per forward when not given (within the method's max_chunk: sepllm's window). Larger
# chunks run bigger matmuls; chosen with `bench/stream.py throughput` (docs/models.md).
DEFAULT_CHUNK = 224


def _check_int(name: str, value, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"--{name} must be an integer, got {value!r}")
    if value < least:
        raise ConfigError(f"--{name} must be >= {least}, got {value}")


@dataclass(frozen=True)
class StreamConfig:
    """Cache budget and chunking of one streaming run (defaults: the official SepLLM streaming
    settings, init 4, sep 64, window 224, capacity 324).

    Which fields a method reads and what it requires of them is the method's
    (:mod:`sepcli.stream.methods`: ``reads``, ``check``, ``max_chunk``); this class checks
    that they are integers in range and asks the method for the rest.

    Attributes
    ----------
    method : which tokens the cache keeps (one of :data:`sepcli.stream.methods.METHODS`).
    init : the first tokens of the stream, kept forever (attention sinks; sepllm, streamingllm).
    sep : most separator tokens kept from text older than the local window (sepllm).
    window : the newest tokens, always kept (sepllm).
    capacity : ring slots: most tokens in the cache, including the token being processed (a
        token attends to at most ``capacity`` entries, itself included). The official loops
        the paper's numbers come from attend to ``c`` cached entries *plus* the token and evict
        afterwards, so their ``c`` is ``capacity - 1`` (:attr:`paper_c`): ``--capacity c + 1``
        reproduces them exactly (docs/stream.md). ``full`` ignores it and uses the model's
        context length.
    chunk : tokens per forward pass, at most the method's ``max_chunk`` (sepllm: ``window``);
        None picks ``DEFAULT_CHUNK`` within that. 1 is the paper's token-by-token evaluation;
        every method gives the same result for any chunk (up to float rounding; see
        docs/stream.md), larger chunks are faster.
    """

    method: str = "sepllm"
    init: int = 4
    sep: int = 64
    window: int = 224
    capacity: int = 324
    chunk: int | None = None

    def __post_init__(self) -> None:
        cls = method_class(self.method)
        for name in ("init", "sep"):
            _check_int(name, getattr(self, name), 0)
        for name in ("window", "capacity"):
            _check_int(name, getattr(self, name), 1)
        cap = cls.max_chunk(self)
        if self.chunk is None:
            chunk = DEFAULT_CHUNK if cap is None else min(DEFAULT_CHUNK, cap[0])
            object.__setattr__(self, "chunk", max(1, chunk))
        _check_int("chunk", self.chunk, 1)
        if cap is not None and self.chunk > cap[0]:
            raise ConfigError(f"--chunk {self.chunk} is larger than {cap[1]} {cap[0]}")
        cls.check(self)

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


PER_UNITS = ("line", "paragraph")  # what ``stream --per`` reports on (sepcli.stream.units)


@dataclass(frozen=True)
class StreamRun:
    """What one ``sepcli stream`` run does besides its cache (that is the :class:`StreamConfig`).

    Attributes
    ----------
    ppl : score every token (False only fills the cache).
    max_tokens : stop after this many tokens of input (None: read it all).
    checkpoint : write the stream state here at the end, on Ctrl-C, and every ``every`` tokens.
    every : with ``checkpoint``: also write every N tokens.
    resume : continue from this checkpoint (same input, model and config).
    interval : seconds between progress reports.
    per : ``line`` | ``paragraph``: one record per unit (:data:`PER_UNITS`) instead of progress.
    text : with ``per``: include each unit's text.
    """

    ppl: bool = True
    max_tokens: int | None = None
    checkpoint: Path | None = None
    every: int | None = None
    resume: Path | None = None
    interval: float = 1.0
    per: str | None = None
    text: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if self.every is not None and (self.every < 1 or self.checkpoint is None):
            raise ConfigError("--every N needs N >= 1 and --checkpoint PATH")
        if not math.isfinite(self.interval) or self.interval < 0:
            raise ConfigError(f"--interval must be a number of seconds >= 0, got {self.interval}")
        if self.per is not None:
            if self.per not in PER_UNITS:
                raise ConfigError(f"--per must be one of {', '.join(PER_UNITS)}, got {self.per!r}")
            if self.resume is not None or self.max_tokens is not None or not self.ppl:
                raise ConfigError(
                    "--per scores a whole input: not with --resume, --max-tokens or --no-ppl"
                )
        elif self.text:
            raise ConfigError("--text goes with --per line|paragraph")
