"""SepLLM streaming: a fixed ring KV cache, the cache methods, and the layer-by-layer engine.

Data flow: :mod:`reader` (bytes -> token ids) -> :mod:`engine` (chunks -> model over the
:mod:`ring` under one of the :mod:`methods`) -> :mod:`metrics`; :mod:`checkpoint` saves and restores it.
"""

from sepcli.stream.config import METHODS, StreamConfig
from sepcli.stream.engine import ChunkStats, StreamEngine

__all__ = ["METHODS", "ChunkStats", "StreamConfig", "StreamEngine"]
