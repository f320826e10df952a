"""The KV cache options every command that runs the ring shares (stream, generate, chat, score).

Each option maps to one :class:`~sepcli.stream.config.StreamConfig` field and takes its default
from there; :func:`cache_config` builds the config and warns about options the method ignores.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sepcli.cli_common import warn_ignored
from sepcli.stream.config import METHODS, StreamConfig

DEFAULT_CACHE = StreamConfig()  # the defaults, defined once in the config

MethodOpt = Annotated[
    str, typer.Option("--method", help=f"KV cache policy: {' | '.join(METHODS)}.")
]
InitOpt = Annotated[int, typer.Option("--init", help="Initial (sink) tokens kept forever.")]
SepOpt = Annotated[
    int, typer.Option("--sep", help="Separator tokens kept from older text (sepllm).")
]
WindowOpt = Annotated[int, typer.Option("--window", help="Local window of newest tokens (sepllm).")]
CapacityOpt = Annotated[
    int,
    typer.Option(
        "--capacity",
        help="KV cache slots, the current token's included, at most the model's context "
        "(sepllm: > init+sep+window; full: the model's context). The paper's and official "
        "loops' c is --capacity c+1 (they attend to c cached tokens plus the current one).",
    ),
]
ChunkOpt = Annotated[
    int | None,
    typer.Option(
        "--chunk",
        help="Tokens per forward pass, at most --window (1 = token by token; the result is "
        "the same for any chunk; default: min(224, --window)).",
    ),
]

# Options that only some methods read: {option: methods that use it}.
USED_BY = {
    "sep": ("sepllm",),
    "window": ("sepllm",),
    "capacity": ("sepllm", "streamingllm", "window"),
}


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
    unused = [name for name, methods in USED_BY.items() if method not in methods]
    warn_ignored(ctx, unused, f"with --method {method}")
    return config
