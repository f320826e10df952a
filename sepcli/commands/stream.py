"""`sepcli stream`: perplexity over text of any length with a fixed-size SepLLM KV cache.

Thin on purpose: options -> StreamConfig, input -> token blocks, engine chunks -> metrics ->
a rich live view on a terminal or JSON lines when piped. The tensor work is in sepcli/stream/.
"""

from __future__ import annotations

import json
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
from sepcli.commands.stream_view import JsonLines, LiveView
from sepcli.errors import CheckpointError, ConfigError, InputError
from sepcli.stream.config import StreamRun
from sepcli.stream.reader import (
    ReadStats,
    check_path,
    check_text_file,
    open_input,
    start_token,
    stream_tokens,
)
from sepcli.stream.units import UnitTracker, stream_units

DEFAULT_RUN = StreamRun()  # the run options' defaults, defined once in the config


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
    ] = DEFAULT_RUN.ppl,
    json_out: JsonOpt = False,
    max_tokens: Annotated[
        int | None,
        typer.Option(
            "--max-tokens", help="Stop after this many tokens of input (default: read it all)."
        ),
    ] = DEFAULT_RUN.max_tokens,
    checkpoint_path: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Write the stream state here (at the end, on Ctrl-C, and --every N tokens).",
        ),
    ] = DEFAULT_RUN.checkpoint,
    every: Annotated[
        int | None, typer.Option("--every", help="With --checkpoint: also write every N tokens.")
    ] = DEFAULT_RUN.every,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue from a checkpoint (same input, model and config)."),
    ] = DEFAULT_RUN.resume,
    interval: Annotated[
        float, typer.Option("--interval", help="Seconds between progress reports.")
    ] = DEFAULT_RUN.interval,
    per: Annotated[
        str | None,
        typer.Option(
            "--per",
            help="line | paragraph: a JSON record per unit as soon as it is scored (in the "
            "stream's context), instead of the progress lines.",
        ),
    ] = DEFAULT_RUN.per,
    with_text: Annotated[
        bool, typer.Option("--text", help="With --per: include each unit's text.")
    ] = DEFAULT_RUN.text,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Stream a text of any length through the model with a fixed KV cache; report perplexity."""
    check_text_file(file)  # the reader rule, before torch and the model load
    if resume is not None:
        check_path(resume, "--resume")
    # torch loads with these, after the options are parsed (`--help` does not wait for it)
    from sepcli.memory import peak_rss_mb
    from sepcli.separators import separator_mask
    from sepcli.stream import checkpoint
    from sepcli.stream.engine import StreamEngine
    from sepcli.stream.metrics import RunMetrics

    # Every check on user input happens before the model loads and before anything is written.
    config = cache_config(ctx, method, init, sep, window, capacity, chunk)
    opts = StreamRun(
        ppl=ppl,
        max_tokens=max_tokens,
        checkpoint=checkpoint_path,
        every=every,
        resume=resume,
        interval=interval,
        per=per,
        text=with_text,
    )
    if opts.checkpoint is not None:
        checkpoint.check_target(opts.checkpoint)
    if file == "-" and sys.stdin.isatty():
        raise InputError("no input: give a FILE, or pipe text into `sepcli stream -`")
    with open_input(file) as source:
        lm = load(model, device, dtype, threads)
        engine = StreamEngine(lm.model, config, separator_mask(lm.tokenizer), score=opts.ppl)
        metrics = RunMetrics(engine.capacity)
        # the BOS the stream starts with, if any, is not input
        meta = checkpoint.run_meta("stream", lm, config)
        run = checkpoint.Checkpointed(meta, engine, metrics, head=len(start_token(lm.tokenizer)))
        if opts.resume is not None:
            run.restore(opts.resume)
            if opts.max_tokens is not None and opts.max_tokens <= run.input_tokens:
                raise ConfigError(
                    f"--max-tokens {opts.max_tokens}: the checkpoint has already read "
                    f"{run.input_tokens} tokens of input, nothing is left to stream"
                )

        resolved = config.resolved(engine.capacity)
        info = {
            **run_info(lm),
            "threads": lm.threads,
            "input": file,
            "max_tokens": opts.max_tokens,
            "resumed_at": run.input_tokens if opts.resume else None,
        }
        show_config("stream", {**resolved, **info})

        stats = ReadStats()
        blocks = [] if opts.per else stream_tokens(lm.tokenizer, source, stats, opts.max_tokens)
        size, made = input_size(file), [0]  # tokens the reader has made so far
        blocks = _counted(blocks, made)

        def done_fraction() -> float | None:
            """How much of the run is done: of --max-tokens, else of the file, estimated as the
            share of the bytes read times the share of their tokens the engine has taken."""
            if opts.max_tokens is not None:
                return run.input_tokens / opts.max_tokens
            if not size or not made[0]:
                return None
            return stats.bytes_read / size * min(1.0, engine.seen / made[0])

        if opts.resume is not None:  # read past what the checkpoint fed, checking it is the same
            blocks = run.skip_fed(blocks)
        if opts.checkpoint is not None:
            checkpoint.probe(opts.checkpoint)  # fail now, not after hours of streaming

        use_json = json_out or opts.per is not None or not sys.stdout.isatty()
        renderer = JsonLines(opts.interval) if use_json else LiveView(opts.interval)
        interrupted, last_saved = False, engine.seen
        with StopFlag() as stop, renderer:
            if opts.per is not None:
                tracker = UnitTracker(opts.per, keep_text=opts.text)
                for record in stream_units(
                    engine, lm.tokenizer, source, stats, tracker, metrics.update,
                    lambda: stop.requested,
                ):  # fmt: skip
                    typer.echo(json.dumps({"event": opts.per, **record}, ensure_ascii=False))
                interrupted = stop.requested
            for chunk in engine.run(blocks):
                metrics.update(chunk)
                renderer.progress(with_eta(metrics.snapshot(), done_fraction()))
                if opts.every and engine.seen - last_saved >= opts.every:
                    run.save(opts.checkpoint)
                    last_saved = engine.seen
                if stop.requested:
                    interrupted = True
                    break
            failed = None
            if opts.checkpoint is not None:
                try:
                    run.save(opts.checkpoint)
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
                **info,
            }
            renderer.summary(summary)
        if failed is not None:
            raise failed
        if stats.replaced:
            warn(f"{stats.replaced} undecodable byte sequence(s) replaced with U+FFFD")
        if opts.checkpoint is not None:
            err_console.print(
                f"[dim]checkpoint written to {opts.checkpoint} ({run.input_tokens} tokens of "
                "input)[/]"
            )
        if interrupted:
            raise typer.Exit(128 + stop.signum)  # 130 for Ctrl-C, 143 for SIGTERM


def _counted(blocks, made: list[int]):
    for block in blocks:
        made[0] += len(block)
        yield block


def input_size(file: str) -> int | None:
    """Bytes of a regular file (None for stdin, a pipe or a device: unknown)."""
    if file == "-":
        return None
    p = Path(file).expanduser()
    return p.stat().st_size if p.is_file() else None


def with_eta(snap: dict, fraction: float | None) -> dict:
    """``snap`` plus ``done_pct`` and ``eta_s`` (from the elapsed time) when the size is known."""
    if fraction is None:
        return snap
    fraction = min(max(fraction, 0.0), 1.0)
    elapsed = snap.get("elapsed_s") or 0.0
    eta = elapsed * (1 - fraction) / fraction if fraction > 0 else None
    return {
        **snap,
        "done_pct": round(100 * fraction, 1),
        "eta_s": None if eta is None else round(eta),
    }


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
