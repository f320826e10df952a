"""SepLLM streaming: a fixed ring KV cache, keep/evict policies, and the layer-by-layer engine.

Data flow: :mod:`reader` (bytes -> token ids) -> :mod:`engine` (pieces -> model over the
:mod:`ring` under a :mod:`policy`) -> :mod:`metrics`; :mod:`checkpoint` saves and restores it.
"""

from sepcli.stream.config import METHODS, StreamConfig
from sepcli.stream.engine import PieceStats, StreamEngine

__all__ = ["METHODS", "PieceStats", "StreamConfig", "StreamEngine"]
