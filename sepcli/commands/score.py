"""`sepcli score`: per-document perplexity of a corpus; every input record out, in order, scored.

Thin on purpose: options -> a :class:`~sepcli.score.job.ScoreRecords`, records in batches ->
output lines on stdout, progress on stderr. Reading records is sepcli/score/records.py, scoring
sepcli/score/scorer.py, the Ray Data path sepcli/score/ray_data.py.
"""

from __future__ import annotations

import itertools
import re
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
    warn,
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
from sepcli.errors import ConfigError, InputError
from sepcli.score.job import ScoreRecords, batches
from sepcli.score.records import ReadCounts, check_inputs, input_bytes, read_records
from sepcli.score.scorer import CPU_BATCH_TOKENS, GPU_BATCH_TOKENS


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' -> (I, N) with 0 <= I < N; ConfigError otherwise."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"--shard must be I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return int(match[1]), int(match[2])


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
    ] = "text",
    lines: Annotated[
        bool, typer.Option("--lines", help="Every line of the inputs is a document.")
    ] = False,
    prefix: Annotated[
        str, typer.Option("--prefix", help="Put before the added fields (tokens, nll, ppl, error).")
    ] = "",
    shard: Annotated[
        str | None,
        typer.Option(
            "--shard", help="Score only shard I of N (0-based, records interleaved): I/N."
        ),
    ] = None,
    skip: Annotated[
        int, typer.Option("--skip", help="Skip the first N records (of the shard): resume.")
    ] = 0,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Pass unreadable records through with an error field (default: stop, exit 2).",
        ),
    ] = False,
    batch_tokens: Annotated[
        int | None,
        typer.Option(
            "--batch-tokens",
            help="Padded tokens per forward of short documents "
            f"(default: {CPU_BATCH_TOKENS} on a CPU, {GPU_BATCH_TOKENS} on a GPU).",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            help="Score on a Ray cluster: 'local' starts one here, 'auto' joins the running one, "
            "or an address (ray://host:10001). JSON lines files, folders of them, or URIs.",
        ),
    ] = None,
    ray_actors: Annotated[
        int, typer.Option("--ray-actors", help="With --ray: scoring actors (one model each).")
    ] = 1,
    ray_gpus: Annotated[
        float, typer.Option("--ray-gpus", help="With --ray: GPUs per actor.")
    ] = 0.0,
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
    where = parse_shard(shard)
    if skip < 0:
        raise ConfigError(f"--skip must be >= 0, got {skip}")
    if batch_tokens is not None and batch_tokens < 1:
        raise ConfigError(f"--batch-tokens must be >= 1, got {batch_tokens}")
    if not field or any(not part for part in field.split(".")):
        raise ConfigError(f"--field must name a field (dotted: a.b), got {field!r}")
    check_inputs([f for f in files if ray is None or "://" not in f], ray=ray is not None)
    if "-" in files and sys.stdin.isatty():
        raise InputError("no input: give FILES, or pipe JSON lines into `sepcli score -`")
    if ray is not None:
        from sepcli.commands.score_ray import check_ray_args

        check_ray_args(files, lines, where, skip, ray_actors, ray_gpus)

    if ray is not None:
        from sepcli.commands.score_ray import run_on_ray

        job_kwargs = {
            "model": model,
            "device": device,
            "dtype": dtype,
            "config": config.to_dict(),
            "field": field,
            "prefix": prefix,
            "batch_tokens": batch_tokens,
        }
        shown = {k: v for k, v in job_kwargs.items() if k != "config"}
        show_config("score", {**config.to_dict(), **shown, "ray": ray, "actors": ray_actors})
        run_on_ray(files, ray, job_kwargs, ray_actors, ray_gpus, skip_bad)
        return

    lm = load(model, device, dtype, threads)
    job = ScoreRecords(
        loaded=lm, config=config, field=field, prefix=prefix, batch_tokens=batch_tokens
    )
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
    if where is not None:
        index, count = where
        records = itertools.islice(records, index, None, count)
    records = itertools.islice(records, skip, None)
    _score_to_stdout(job, records, counts, skip, skip_bad, input_bytes(files), files, lines)


def _score_to_stdout(job, records, counts, skip, skip_bad, total_bytes, files, lines) -> None:
    written = bad = tokens = 0
    start = time.perf_counter()
    out = sys.stdout.buffer
    bar = tqdm(
        total=total_bytes, unit="B", unit_scale=True, file=sys.stderr, mininterval=1.0,
        desc="score", dynamic_ncols=True,
    )  # fmt: skip
    interrupted, signum = False, 0
    try:
        with StopFlag() as stop:
            for batch in batches(records, stop_at_error=not skip_bad):
                for record, outcome in zip(batch, job.score_records(batch), strict=True):
                    if outcome.error is not None and not skip_bad:
                        out.flush()
                        raise InputError(
                            f"{record.where}: {outcome.error} ({written} records written before "
                            "it; --skip-bad passes such records through)"
                        )
                    for part in outcome.parts:
                        out.write(part)
                    out.write(b"\n")
                    written += 1
                    bad += outcome.error is not None
                    tokens += outcome.score.tokens if outcome.score else 0
                    bar.update(record.size)
                out.flush()
                elapsed = max(time.perf_counter() - start, 1e-9)
                bar.set_postfix(docs=written, tokens=tokens, tok_s=f"{tokens / elapsed:.0f}")
                if stop.requested:
                    interrupted, signum = True, stop.signum
                    break
    finally:
        bar.close()
    elapsed = time.perf_counter() - start
    err_console.print(
        f"[dim]score: {written} record{'' if written == 1 else 's'}, {tokens} tokens in {elapsed:.1f} s "
        f"({written / max(elapsed, 1e-9):.1f} docs/s, {tokens / max(elapsed, 1e-9):.0f} tok/s)[/]"
    )
    if counts.replaced:
        warn(f"{counts.replaced} undecodable byte sequence(s) replaced with U+FFFD")
    if bad:
        warn(f"{bad} record(s) could not be scored; passed through with an error field")
    if interrupted:
        err_console.print(
            f"interrupted: {written} record{'' if written == 1 else 's'} written; continue with --skip {skip + written} "
            "(same inputs and --shard)"
        )
        raise typer.Exit(128 + signum)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
