"""What a `sepcli score` run reads, adds and where it runs, besides its cache (a StreamConfig)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sepcli.errors import ConfigError


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N; None for None; ConfigError otherwise."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


@dataclass(frozen=True)
class ScoreConfig:
    """One corpus run's options (each is one ``sepcli score`` option).

    Attributes
    ----------
    field : dotted JSON field that holds the document.
    lines : every line of the inputs is a document.
    prefix : put before the added field names (``tokens``, ``nll``, ``ppl``, ``error``).
    shard : ``"I/N"``: score only shard I of N (records interleaved); :attr:`where` parses it.
    skip : skip the first N records (of the shard): how an interrupted run continues.
    skip_bad : pass unreadable records through with an error field (else stop, exit 2).
    batch_tokens : padded tokens per forward for documents that fit the cache (None: by
        device, :func:`sepcli.score.scorer.default_batch_tokens`).
    ray : score on a Ray cluster: ``local``, ``auto`` or an address (None: here).
    ray_actors : with ``ray``: scoring actors, one model each.
    ray_gpus : with ``ray``: GPUs per actor.
    """

    field: str = "text"
    lines: bool = False
    prefix: str = ""
    shard: str | None = None
    skip: int = 0
    skip_bad: bool = False
    batch_tokens: int | None = None
    ray: str | None = None
    ray_actors: int = 1
    ray_gpus: float = 0.0

    def __post_init__(self) -> None:
        self.where  # noqa: B018 - parses (and so checks) --shard
        if self.skip < 0:
            raise ConfigError(f"--skip must be >= 0, got {self.skip}")
        if self.batch_tokens is not None and self.batch_tokens < 1:
            raise ConfigError(f"--batch-tokens must be >= 1, got {self.batch_tokens}")
        if not self.field or any(not part for part in self.field.split(".")):
            raise ConfigError(f"--field must name a field (dotted: a.b), got {self.field!r}")
        if self.ray is not None:
            if self.lines:
                raise ConfigError(
                    "--ray reads JSON lines files (.gz too), folders of them or URIs the "
                    "cluster can read (s3://...); not stdin or --lines"
                )
            if self.shard is not None or self.skip:
                raise ConfigError(
                    "--shard and --skip are for the local path; with --ray the cluster splits "
                    "the work"
                )
            if self.ray_actors < 1 or self.ray_gpus < 0:
                raise ConfigError(
                    f"--ray-actors must be >= 1 and --ray-gpus >= 0, got {self.ray_actors}, "
                    f"{self.ray_gpus}"
                )

    @property
    def where(self) -> tuple[int, int] | None:
        """The shard as (index, count), or None."""
        return parse_shard(self.shard)

    def records_kwargs(self) -> dict:
        """What :class:`~sepcli.score.job.ScoreRecords` takes from these options."""
        return {"field": self.field, "prefix": self.prefix, "batch_tokens": self.batch_tokens}
