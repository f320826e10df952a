"""The cache methods, one per file: what each keeps, and how a chunk attends under it.

:mod:`base` holds the mechanism (ring steps over :func:`kernels.ring_attention`); a new method
is a subclass that implements ``make_room`` (and, if its chunks need another attention plan,
``plan_chunk``), registered in :data:`METHOD_CLASSES` under the name ``--method`` takes.
"""

from __future__ import annotations

from sepcli.stream.config import StreamConfig
from sepcli.stream.methods.base import ChunkPlan, Method
from sepcli.stream.methods.full import Full
from sepcli.stream.methods.sepllm import SepLLM
from sepcli.stream.methods.sliding import StreamingLLM, Window

METHOD_CLASSES: dict[str, type[Method]] = {m.name: m for m in (SepLLM, StreamingLLM, Window, Full)}


def make_method(config: StreamConfig) -> Method:
    """The method object ``config.method`` names (its ring size is set by ``ring_slots``)."""
    return METHOD_CLASSES[config.method](config)


__all__ = ["ChunkPlan", "METHOD_CLASSES", "Method", "make_method"]
