"""The cache methods, one per file: what each keeps, the options it reads and checks, and how a
chunk attends under it.

:mod:`base` holds the mechanism (ring steps over :func:`kernels.ring_attention`); a new method
is a subclass in its own file that sets ``name`` and ``reads`` and implements ``make_room`` (and,
if its chunks need another attention plan, ``plan_chunk``), listed in :data:`METHOD_CLASSES`:
``--method``, the config's validation and the CLI's warnings all come from there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sepcli.errors import ConfigError
from sepcli.stream.methods.base import ChunkPlan, Method
from sepcli.stream.methods.full import Full
from sepcli.stream.methods.sepllm import SepLLM
from sepcli.stream.methods.sliding import StreamingLLM, Window

if TYPE_CHECKING:
    from sepcli.stream.config import StreamConfig

METHOD_CLASSES: dict[str, type[Method]] = {m.name: m for m in (SepLLM, StreamingLLM, Window, Full)}


def method_class(name: str) -> type[Method]:
    """The class ``--method name`` runs; ConfigError naming the choices for any other name."""
    if name not in METHOD_CLASSES:
        raise ConfigError(f"unknown method {name!r}: use one of {', '.join(METHOD_CLASSES)}")
    return METHOD_CLASSES[name]


def make_method(config: StreamConfig) -> Method:
    """The method object ``config.method`` names (its ring size is set by ``ring_slots``)."""
    return METHOD_CLASSES[config.method](config)


__all__ = ["ChunkPlan", "METHOD_CLASSES", "Method", "make_method", "method_class"]
