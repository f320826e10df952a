"""`sepcli score --ray`: the same records and output as the local path, scored on Ray actors.

The driver only connects, hands the files to Ray Data and writes the rows that come back, in
input order, to stdout (sepcli/score/ray_data.py builds the dataset).
"""

from __future__ import annotations

import importlib.util
import sys
import time

import typer

from sepcli.cli_common import err_console, warn
from sepcli.commands.interrupt import StopFlag
from sepcli.errors import ConfigError, InputError


def check_ray_args(
    files: list[str], lines: bool, shard, skip: int, actors: int, gpus: float
) -> None:
    """ConfigError for what --ray does not do (before anything loads)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--ray needs Ray Data: pip install 'sepcli[ray]'")
    if "-" in files or lines:
        raise ConfigError(
            "--ray reads JSON lines files (.gz too), folders of them or URIs the cluster can "
            "read (s3://...); not stdin or --lines"
        )
    if shard is not None or skip:
        raise ConfigError(
            "--shard and --skip are for the local path; with --ray the cluster splits the work"
        )
    if actors < 1 or gpus < 0:
        raise ConfigError(f"--ray-actors must be >= 1 and --ray-gpus >= 0, got {actors}, {gpus}")


def run_on_ray(
    files: list[str], address: str, job_kwargs: dict, actors: int, gpus: float, skip_bad: bool
) -> None:
    from sepcli.score.ray_data import connect, score_rows

    connect(address)
    written = bad = replaced = 0
    start = time.perf_counter()
    out = sys.stdout
    rows = score_rows(files, job_kwargs, actors, gpus)
    with StopFlag() as stop:
        while True:
            try:
                with stop.interruptible():  # waiting on the cluster: Ctrl-C stops at once
                    row = next(rows, None)
            except KeyboardInterrupt:
                if not stop.requested:
                    raise
                break
            if row is None:
                break
            replaced += row["replaced"]
            if row["out"] is None:  # a blank line
                continue
            if row["error"] is not None and not skip_bad:
                out.flush()
                raise InputError(
                    f"{row['path']}:{row['line']}: {row['error']} ({written} records written "
                    "before it; --skip-bad passes such records through)"
                )
            out.write(row["out"] + "\n")
            written += 1
            bad += row["error"] is not None
            if stop.requested:
                break
        out.flush()
    elapsed = time.perf_counter() - start
    err_console.print(
        f"[dim]score: {written} record{'' if written == 1 else 's'} in {elapsed:.1f} s on Ray[/]"
    )
    if replaced:
        warn(f"{replaced} undecodable byte sequence(s) replaced with U+FFFD")
    if bad:
        warn(f"{bad} record(s) could not be scored; passed through with an error field")
    if stop.requested:
        err_console.print(f"interrupted: {written} record{'' if written == 1 else 's'} written")
        raise typer.Exit(128 + stop.signum)
