"""The decoding options `generate` and `chat` share: length, sampling and stop conditions.

Each option maps to one :class:`~sepcli.generate.decode.GenerateConfig` (or its
:class:`~sepcli.generate.sampling.SamplingConfig`) field; :func:`generate_config` builds and
validates it.
"""

from __future__ import annotations

from typing import Annotated

import typer

from sepcli.errors import ConfigError
from sepcli.generate.decode import GenerateConfig
from sepcli.generate.sampling import SamplingConfig

DEFAULT_SAMPLING = SamplingConfig()

# Read as text so that "-n many" gets the same one-line error as "-n -1" (not a usage box).
MaxNewOpt = Annotated[
    str,
    typer.Option(
        "--max-new-tokens", "-n", metavar="INTEGER", help="Most tokens to generate (0: no limit)."
    ),
]
TemperatureOpt = Annotated[
    float, typer.Option("--temperature", "-t", help="0 is greedy; > 0 samples.")
]
TopPOpt = Annotated[
    float, typer.Option("--top-p", help="Nucleus sampling: keep the most likely tokens up to p.")
]
TopKOpt = Annotated[int, typer.Option("--top-k", help="Keep only the k most likely (0: all).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Sampling seed: same seed, same output.")]
StopOpt = Annotated[
    list[str] | None,
    typer.Option("--stop", help="Stop before this string (repeatable)."),
]
StopRepeatsOpt = Annotated[
    int,
    typer.Option(
        "--stop-repeats",
        metavar="N",
        help="Stop when the text loops: the last tokens are one span of 8 or more tokens said N "
        "times in a row (0: off).",
    ),
]
IgnoreEosOpt = Annotated[
    bool, typer.Option("--ignore-eos", help="Keep generating past the end-of-sequence token.")
]


def generate_config(
    max_new_tokens: str | int,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int,
    stop: list[str] | None,
    ignore_eos: bool,
    stop_repeats: int = 0,
) -> GenerateConfig:
    """The validated GenerateConfig of the command line (ConfigError on bad values)."""
    try:
        max_new_tokens = int(max_new_tokens)
    except ValueError:
        raise ConfigError(
            f"--max-new-tokens must be an integer >= 0 (0: no limit), got {max_new_tokens!r}"
        ) from None
    sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return GenerateConfig(
        max_new_tokens=max_new_tokens,
        stop=tuple(stop or ()),
        ignore_eos=ignore_eos,
        sampling=sampling,
        stop_repeats=stop_repeats,
    )
