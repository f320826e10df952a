"""The cache methods, one per file: what each keeps, the options it reads and checks, and how a
chunk attends under it.

:mod:`base` holds the mechanism (ring steps over :func:`sepcli.kernels.ring_attention`); a new
method is a subclass in its own file that sets ``name`` and ``reads`` and implements
``make_room`` (and, if its chunks need another attention plan, ``plan_chunk``), plus one line
in :data:`METHODS`: ``--method``, the config's validation and the CLI's warnings all come from
there.

The table names the classes instead of importing them so that the CLI can list ``--method``
before torch loads (``sepcli --help`` answers at once); a class is imported when a config
names it. ``tests/test_stream_engine.py`` checks the table against the classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sepcli.errors import ConfigError

if TYPE_CHECKING:
    from sepcli.stream.config import StreamConfig
    from sepcli.stream.methods.base import Method

# --method name -> "module in this package:class"
METHODS: dict[str, str] = {
    "sepllm": "sepllm:SepLLM",
    "streamingllm": "sliding:StreamingLLM",
    "window": "sliding:Window",
    "full": "full:Full",
}


def method_class(name: str) -> type[Method]:
    """The class ``--method name`` runs; ConfigError naming the choices for any other name."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}: use one of {', '.join(METHODS)}")
    module, cls = METHODS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_method(config: StreamConfig) -> Method:
    """The method object ``config.method`` names (its ring size is set by ``ring_slots``)."""
    return method_class(config.method)(config)
