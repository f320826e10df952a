"""`sepcli score`: per-document perplexity of a corpus; every input record out, in order, scored.

Thin on purpose: options -> a :class:`~sepcli.score.job.ScoreRecords`, records in batches ->
output lines on stdout, progress on stderr. Reading records is sepcli/score/records.py, scoring
sepcli/score/scorer.py, the Ray Data path sepcli/score/ray_data.py.
"""

from __future__ import annotations

import itertools
import sys
import time
from typing import Annotated

import typer
from tqdm import tqdm

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    ThreadsOpt,
    err_console,
    guarded,
    load,
    run_info,
    show_config,
)
from sepcli.commands.cache_options import (
    DEFAULT_CACHE,
    CapacityOpt,
    ChunkOpt,
    InitOpt,
    MethodOpt,
    SepOpt,
    WindowOpt,
    cache_config,
)
from sepcli.commands.interrupt import StopFlag
from sepcli.commands.score_writer import RecordWriter
from sepcli.errors import InputError
from sepcli.score.config import ScoreConfig
from sepcli.score.job import ScoreRecords, batches
from sepcli.score.records import ReadCounts, check_inputs, input_bytes, read_records
from sepcli.score.scorer import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS

DEFAULT_SCORE = ScoreConfig()  # the run options' defaults, defined once in the config


@guarded
def score(
    ctx: typer.Context,
    files: Annotated[
        list[str] | None,
        typer.Argument(
            help="JSON lines (.jsonl/.ndjson/.json, .gz too; '-' for stdin), or text files "
            "(one document each; with --lines one document per line)."
        ),
    ] = None,
    field: Annotated[
        str, typer.Option("--field", help="JSON field holding the document (dotted: a.b).")
    ] = DEFAULT_SCORE.field,
    lines: Annotated[
        bool, typer.Option("--lines", help="Every line of the inputs is a document.")
    ] = DEFAULT_SCORE.lines,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Put before the added fields (tokens, nll, ppl, error).")
    ] = DEFAULT_SCORE.prefix,
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Score only shard I of N (0-based, records interleaved): I/N."
        ),
    ] = DEFAULT_SCORE.shard,
    skip: Annotated[
        int, typer.Option("--skip", help="Skip the first N records (of the shard): resume.")
    ] = DEFAULT_SCORE.skip,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Pass unreadable records through with an error field (default: stop, exit 2).",
        ),
    ] = DEFAULT_SCORE.skip_bad,
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            "--batch-tokens",
            help="Padded tokens per forward of short documents "
            f"(default: {CPU_BATCH_TOKENS} on a CPU, {GPU_BATCH_TOKENS} on a GPU).",
        ),
    ] = DEFAULT_SCORE.batch_tokens,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Score on a Ray cluster: 'local' starts one here, 'auto' joins the running one, "
            "or an address (ray://host:10001). JSON lines files, folders of them, or URIs.",
        ),
    ] = DEFAULT_SCORE.ray,
    ray_actors: Annotated[
        int, typer.Option("--ray-actors", help="With --ray: scoring actors (one model each).")
    ] = DEFAULT_SCORE.ray_actors,
    ray_gpus: Annotated[
        float, typer.Option("--ray-gpus", help="With --ray: GPUs per actor.")
    ] = DEFAULT_SCORE.ray_gpus,
    model: ModelOpt = MODEL_DEFAULT,
    method: MethodOpt = DEFAULT_CACHE.method,
    init: InitOpt = DEFAULT_CACHE.init,
    sep: SepOpt = DEFAULT_CACHE.sep,
    window: WindowOpt = DEFAULT_CACHE.window,
    capacity: CapacityOpt = DEFAULT_CACHE.capacity,
    chunk: ChunkOpt = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Perplexity of every document of a corpus, scored whole (long ones through the ring)."""
    files = files or ["-"]
    config = cache_config(ctx, method, init, sep, window, capacity, chunk)
    opts = ScoreConfig(
        field=field,
        lines=lines,
        prefix=prefix,
        shard=shard,
        skip=skip,
        skip_bad=skip_bad,
        batch_tokens=batch_tokens,
        ray=ray,
        ray_actors=ray_actors,
        ray_gpus=ray_gpus,
    )
    check_inputs([f for f in files if ray is None or "://" not in f], ray=ray is not None)
    if "-" in files and sys.stdin.isatty():
        raise InputError("no input: give FILES, or pipe JSON lines into `sepcli score -`")

    if opts.ray is not None:
        from sepcli.commands.score_ray import check_ray_args, run_on_ray

        check_ray_args(files)
        shown = {"model": model, "device": device, "dtype": dtype, **opts.records_kwargs()}
        job_kwargs = {**shown, "config": config.to_dict()}
        show_config("score", {**config.to_dict(), **shown, "ray": ray, "actors": ray_actors})
        run_on_ray(files, job_kwargs, opts)
        return

    lm = load(model, device, dtype, threads)
    job = ScoreRecords(loaded=lm, config=config, **opts.records_kwargs())
    show_config(
        "score",
        {
            **config.resolved(job.scorer.capacity),
            **run_info(lm),
            "threads": lm.threads,
            "field": None if lines else field,
            "shard": shard,
            "skip": skip or None,
            "batch_tokens": job.scorer.batch_tokens,
        },
    )
    counts = ReadCounts()
    records = read_records(files, field, lines, counts)
    if opts.where is not None:
        index, count = opts.where
        records = itertools.islice(records, index, None, count)
    records = itertools.islice(records, skip, None)
    _score_to_stdout(job, records, counts, opts, input_bytes(files))


def _score_to_stdout(job, records, counts, opts: ScoreConfig, total_bytes: int) -> None:
    writer = RecordWriter(opts.skip_bad)
    start = time.perf_counter()
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, file=sys.stderr, mininterval=1.0,
        desc="score", dynamic_ncols=True,
    )  # fmt: skip
    interrupted, signum = False, 0
    pending = batches(records, stop_at_error=not opts.skip_bad)
    try:
        with StopFlag() as stop:
            while True:
                try:
                    # Ctrl-C stops at once while records are read and scored (a batch of long
                    # documents takes minutes); nothing of this batch is written yet.
                    with stop.interruptible():
                        batch = next(pending, None)
                        if batch is None:
                            break
                        outcomes = job.score_records(batch)
                except KeyboardInterrupt:
                    if not stop.requested:
                        raise
                    interrupted, signum = True, stop.signum
                    break
                for record, outcome in zip(batch, outcomes, strict=True):
                    tokens = outcome.score.tokens if outcome.score else 0
                    writer.write(record.where, outcome.parts, outcome.error, tokens)
                    bar.update(record.size)
                writer.flush()
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(
                    docs=writer.written,
                    tokens=writer.tokens,
                    tok_s=f"{writer.tokens / elapsed:.0f}",
                )
                if stop.requested:
                    interrupted, signum = True, stop.signum
                    break
    finally:
        bar.close()
    elapsed = max(time.perf_counter() - start, 1e-9)
    written, tokens = writer.written, writer.tokens
    err_console.print(
        f"[dim]score: {written} record{'' if written == 1 else 's'}, {tokens} tokens in "
        f"{elapsed:.1f} s ({written / elapsed:.1f} docs/s, {tokens / elapsed:.0f} tok/s)[/]"
    )
    writer.close(counts.replaced)
    if interrupted:
        err_console.print(
            f"interrupted: {written} record{'' if written == 1 else 's'} written; continue with "
            f"--skip {opts.skip + written} "
            "(same inputs and --shard)"
        )
        raise typer.Exit(128 + signum)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
