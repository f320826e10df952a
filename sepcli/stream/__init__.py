"""SepLLM streaming: a fixed ring KV cache, the cache methods, and the layer-by-layer engine.

Data flow: :mod:`reader` (bytes -> token ids) -> :mod:`engine` (chunks -> model over the
:mod:`ring` under one of the :mod:`methods`) -> :mod:`metrics`; :mod:`checkpoint` saves and restores it.
"""

from sepcli.stream.config import METHODS, StreamConfig

__all__ = ["METHODS", "ChunkStats", "StreamConfig", "StreamEngine"]


def __getattr__(name: str):
    # the engine (and torch) load on first use: the CLI reads StreamConfig's defaults to parse
    # options, and `--help` must not wait for torch
    if name in ("ChunkStats", "StreamEngine"):
        from sepcli.stream import engine

        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
