"""The KV cache options every command that runs the ring shares (stream, generate, chat, score).

Each option maps to one :class:`~sepcli.stream.config.StreamConfig` field and takes its default
from there; :func:`cache_config` builds the config and warns about the options the method does
not read (its class's ``reads``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from sepcli.cli_common import warn_ignored
from sepcli.stream.config import StreamConfig
from sepcli.stream.methods import METHODS, method_class

# The defaults, defined once in the config (its class attributes: an instance would validate
# itself through the method's class, which imports torch before the options are parsed).
DEFAULT_CACHE = StreamConfig

MethodOpt = Annotated[
    str, typer.Option("--method", help=f"KV cache policy: {' | '.join(METHODS)}.")
]
InitOpt = Annotated[
    int, typer.Option("--init", help="Initial (sink) tokens kept forever (sepllm, streamingllm).")
]
SepOpt = Annotated[
    int, typer.Option("--sep", help="Separator tokens kept from older text (sepllm).")
]
WindowOpt = Annotated[int, typer.Option("--window", help="Local window of newest tokens (sepllm).")]
CapacityOpt = Annotated[
    int,
    typer.Option(
        "--capacity",
        help="KV cache slots, the current token's included, at most the model's context "
        "(sepllm: > init+sep+window; full does not read it: the model's context). The "
        "paper's and official loops' c is --capacity c+1 (they attend to c cached tokens "
        "plus the current one).",
    ),
]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk",
        help="Tokens per forward pass, for sepllm at most --window (1 = token by token; the "
        "result is the same for any chunk; default: 224, for sepllm min(224, --window)).",
    ),
]

# The cache options a method may read (StreamConfig fields, besides method and chunk).
BUDGET_FIELDS = ("init", "sep", "window", "capacity")


def cache_config(
    ctx: typer.Context,
    method: str,
    init: int,
    sep: int,
    window: int,
    capacity: int,
    chunk: int | None,
) -> StreamConfig:
    """The validated StreamConfig of the command line (ConfigError on bad values); warns on
    stderr about cache options given on the command line that ``method`` does not read."""
    config = StreamConfig(
        method=method, init=init, sep=sep, window=window, capacity=capacity, chunk=chunk
    )
    reads = method_class(method).reads
    warn_ignored(ctx, [n for n in BUDGET_FIELDS if n not in reads], f"with --method {method}")
    return config
