"""`sepcli stream`: perplexity over text of any length with a fixed-size SepLLM KV cache.

Thin on purpose: options -> StreamConfig, input -> token blocks, engine chunks -> metrics ->
a rich live view on a terminal or JSON lines when piped. The tensor work is in sepcli/stream/.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    dtype_name,
    err_console,
    guarded,
    load,
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
from sepcli.commands.stream_view import JsonLines, LiveView
from sepcli.errors import CheckpointError, ConfigError, InputError
from sepcli.stream.reader import ReadStats, open_input, start_token, stream_tokens
from sepcli.stream.units import UNITS, UnitTracker, stream_units


@guarded
def stream(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(help="Text file to stream, or '-' for stdin.")] = "-",
    model: ModelOpt = MODEL_DEFAULT,
    method: MethodOpt = DEFAULT_CACHE.method,
    init: InitOpt = DEFAULT_CACHE.init,
    sep: SepOpt = DEFAULT_CACHE.sep,
    window: WindowOpt = DEFAULT_CACHE.window,
    capacity: CapacityOpt = DEFAULT_CACHE.capacity,
    chunk: ChunkOpt = None,
    ppl: Annotated[
        bool,
        typer.Option("--ppl/--no-ppl", help="Score perplexity (--no-ppl only fills the cache)."),
    ] = True,
    json_out: JsonOpt = False,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", help="Stop after this many tokens of input (default: read it all)."
        ),
    ] = None,
    checkpoint_path: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Write the stream state here (at the end, on Ctrl-C, and --every N tokens).",
        ),
    ] = None,
    every: Annotated[
        int | None, typer.Option("--every", help="With --checkpoint: also write every N tokens.")
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue from a checkpoint (same input, model and config)."),
    ] = None,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between progress reports.")
    ] = 1.0,
    per: Annotated[
        str | None,
        typer.Option(
            "--per",
            help="line | paragraph: a JSON record per unit as soon as it is scored (in the "
            "stream's context), instead of the progress lines.",
        ),
    ] = None,
    with_text: Annotated[
        bool, typer.Option("--text", help="With --per: include each unit's text.")
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Stream a text of any length through the model with a fixed KV cache; report perplexity."""
    # torch loads with these, after the options are parsed (`--help` does not wait for it)
    from sepcli.memory import peak_rss_mb
    from sepcli.separators import separator_mask
    from sepcli.stream import checkpoint
    from sepcli.stream.engine import StreamEngine
    from sepcli.stream.metrics import RunMetrics

    # Every check on user input happens before the model loads and before anything is written.
    config = cache_config(ctx, method, init, sep, window, capacity, chunk)
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    if every is not None and (every < 1 or checkpoint_path is None):
        raise ConfigError("--every N needs N >= 1 and --checkpoint PATH")
    if not math.isfinite(interval) or interval < 0:
        raise ConfigError(f"--interval must be a number of seconds >= 0, got {interval}")
    if per is not None:
        if per not in UNITS:
            raise ConfigError(f"--per must be one of {', '.join(UNITS)}, got {per!r}")
        if resume is not None or max_tokens is not None or not ppl:
            raise ConfigError(
                "--per scores a whole input: not with --resume, --max-tokens or --no-ppl"
            )
    elif with_text:
        raise ConfigError("--text goes with --per line|paragraph")
    if checkpoint_path is not None:
        checkpoint.check_target(checkpoint_path)
    if file == "-" and sys.stdin.isatty():
        raise InputError("no input: give a FILE, or pipe text into `sepcli stream -`")
    with open_input(file) as source:
        lm = load(model, device, dtype, threads)
        engine = StreamEngine(lm.model, config, separator_mask(lm.tokenizer), score=ppl)
        metrics = RunMetrics(engine.capacity)
        # the BOS the stream starts with, if any, is not input
        run = checkpoint.Checkpointed(
            "stream", lm, config, engine, metrics, head=len(start_token(lm.tokenizer))
        )
        if resume is not None:
            run.restore(resume)
            if max_tokens is not None and max_tokens <= run.input_tokens:
                raise ConfigError(
                    f"--max-tokens {max_tokens}: the checkpoint has already read "
                    f"{run.input_tokens} tokens of input, nothing is left to stream"
                )

        resolved = config.resolved(engine.capacity)
        run_info = {
            "model": lm.name,
            "device": str(lm.device),
            "dtype": dtype_name(lm),
            "threads": lm.threads,
            "input": file,
            "max_tokens": max_tokens,
            "resumed_at": run.input_tokens if resume else None,
        }
        err_console.print(
            "[dim]stream: "
            + " ".join(f"{k}={v}" for k, v in {**resolved, **run_info}.items() if v is not None)
            + "[/]"
        )

        stats = ReadStats()
        blocks = [] if per else stream_tokens(lm.tokenizer, source, stats, max_tokens)
        if resume is not None:  # read past what the checkpoint fed, checking it is the same
            blocks = run.skip_fed(blocks)
        if checkpoint_path is not None:
            checkpoint.probe(checkpoint_path)  # fail now, not after hours of streaming

        use_json = json_out or per is not None or not sys.stdout.isatty()
        renderer = JsonLines(interval) if use_json else LiveView(interval)
        interrupted, last_saved = False, engine.seen
        with StopFlag() as stop, renderer:
            if per is not None:
                tracker = UnitTracker(per, keep_text=with_text)
                for record in stream_units(
                    engine, lm.tokenizer, source, stats, tracker, metrics.update,
                    lambda: stop.requested,
                ):  # fmt: skip
                    typer.echo(json.dumps({"event": per, **record}, ensure_ascii=False))
                interrupted = stop.requested
            for chunk in engine.run(blocks):
                metrics.update(chunk)
                renderer.progress(metrics.snapshot())
                if every and engine.seen - last_saved >= every:
                    run.save(checkpoint_path)
                    last_saved = engine.seen
                if stop.requested:
                    interrupted = True
                    break
            failed = None
            if checkpoint_path is not None:
                try:
                    run.save(checkpoint_path)
                except CheckpointError as exc:  # reported after the summary, which still counts
                    failed = exc
            summary = {
                "event": "summary",
                **metrics.snapshot(),
                "input_tokens": run.input_tokens,  # read, scored or not (--no-ppl)
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "interrupted": interrupted,
                "replaced_chars": stats.replaced,
                "config": resolved,
                **run_info,
            }
            renderer.summary(summary)
        if failed is not None:
            raise failed
        if stats.replaced:
            warn(f"{stats.replaced} undecodable byte sequence(s) replaced with U+FFFD")
        if checkpoint_path is not None:
            err_console.print(
                f"[dim]checkpoint written to {checkpoint_path} ({run.input_tokens} tokens of "
                "input)[/]"
            )
        if interrupted:
            raise typer.Exit(128 + stop.signum)  # 130 for Ctrl-C, 143 for SIGTERM


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
