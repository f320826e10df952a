"""`sepcli score --ray`: the same records and output as the local path, scored on Ray actors.

The driver only connects, hands the files to Ray Data and writes the rows that come back, in
input order, to stdout (sepcli/score/ray_data.py builds the dataset).
"""

from __future__ import annotations

import importlib.util
import time

import typer

from sepcli.cli_common import err_console
from sepcli.commands.interrupt import StopFlag
from sepcli.commands.score_writer import RecordWriter
from sepcli.errors import ConfigError
from sepcli.score.config import ScoreConfig


def check_ray_args(files: list[str]) -> None:
    """ConfigError for what --ray does not do with these inputs (before anything loads; the
    options are :class:`~sepcli.score.config.ScoreConfig`'s to check)."""
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--ray needs Ray Data: pip install 'sepcli[ray]'")
    if "-" in files:
        raise ConfigError(
            "--ray reads JSON lines files (.gz too), folders of them or URIs the cluster can "
            "read (s3://...); not stdin or --lines"
        )


def run_on_ray(files: list[str], job_kwargs: dict, opts: ScoreConfig) -> None:
    """Score ``files`` on the cluster ``opts.ray`` names; ``job_kwargs``: ScoreRecords'."""
    from sepcli.score.ray_data import connect, score_rows

    connect(opts.ray)
    writer = RecordWriter(opts.skip_bad)
    replaced = 0
    start = time.perf_counter()
    rows = score_rows(files, job_kwargs, opts.ray_actors, opts.ray_gpus)
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
            where = f"{row['path']}:{row['line']}"
            writer.write(where, [row["out"].encode()], row["error"])
            if stop.requested:
                break
        writer.flush()
    elapsed = time.perf_counter() - start
    written = writer.written
    err_console.print(
        f"[dim]score: {written} record{'' if written == 1 else 's'} in {elapsed:.1f} s on Ray[/]"
    )
    writer.close(replaced)
    if stop.requested:
        err_console.print(f"interrupted: {written} record{'' if written == 1 else 's'} written")
        raise typer.Exit(128 + stop.signum)
