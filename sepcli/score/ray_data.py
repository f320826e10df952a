"""`sepcli score` on a Ray cluster: Ray Data tasks read the files and cut them into lines,
actors (one model each) score batches of lines with :class:`~sepcli.score.job.ScoreRecords`,
and the rows come back to the driver in input order.

Files are read whole by one task each (``read_binary_files``) and cut into lines exactly as the
local reader cuts them (at ``\\n``; undecodable bytes replaced and counted), so a record's line
number is the same on both paths. A corpus of many files is read in parallel; one huge file is
read by one task (split it first to spread the reading).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

from sepcli.score.job import BATCH_RECORDS, ScoreRecords
from sepcli.score.records import ReadCounts, decode


def split_lines(row: dict) -> list[dict]:
    """A ``read_binary_files`` row ``{"bytes", "path"}`` -> one row per line:
    ``{"path", "line" (1-based), "text", "replaced"}``."""
    rows = []
    for number, raw in enumerate(io.BytesIO(row["bytes"]), 1):
        counts = ReadCounts()
        rows.append(
            {
                "path": row["path"],
                "line": number,
                "text": decode(raw, counts),
                "replaced": counts.replaced,
            }
        )
    return rows


def connect(address: str) -> None:
    """Join (or, for ``local``, start) a Ray cluster unless this process is already in one."""
    import ray

    if not ray.is_initialized():
        ray.init(address=None if address == "local" else address, log_to_driver=False)


def score_rows(
    paths: list[str],
    job_kwargs: dict,
    actors: int = 1,
    gpus_per_actor: float = 0.0,
    batch_records: int = BATCH_RECORDS,
) -> Iterator[dict]:
    """Rows ``{"path", "line", "out", "error", "replaced"}`` in input order (``out`` is None
    for a blank line). ``job_kwargs`` are :class:`ScoreRecords`' arguments."""
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Reading and cutting lines reserve no CPU: the scoring actors hold their CPUs for as long
    # as the dataset runs, so on a machine with as many CPUs as actors a reading task that waits
    # for a free CPU would wait forever (and the actors for its lines).
    ds = ray.data.read_binary_files(paths, include_paths=True, num_cpus=0)
    ds = ds.flat_map(split_lines, num_cpus=0)
    ds = ds.map_batches(
        ScoreRecords,
        fn_constructor_kwargs=job_kwargs,
        batch_size=batch_records,
        concurrency=actors,
        num_gpus=gpus_per_actor or None,
    )
    yield from ds.iter_rows()
