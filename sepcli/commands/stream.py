"""`sepcli stream`: perplexity over text of any length with a fixed-size SepLLM KV cache.

Thin on purpose: options -> StreamConfig, input -> token blocks, engine pieces -> metrics ->
a rich live view on a terminal or JSON lines when piped. The tensor work is in sepcli/stream/.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    dtype_name,
    err_console,
    guarded,
    load,
    out_console,
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
from sepcli.errors import CheckpointError, ConfigError, InputError
from sepcli.memory import peak_rss_mb
from sepcli.separators import separator_mask
from sepcli.stream import checkpoint
from sepcli.stream.engine import StreamEngine
from sepcli.stream.metrics import RunMetrics
from sepcli.stream.reader import ReadStats, open_input, resume_from, start_token, stream_tokens


class _JsonLines:
    """One JSON object per report interval on stdout, then the summary line."""

    def __init__(self, interval: float):
        self.interval, self._last = interval, time.perf_counter()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def progress(self, snap: dict, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= self.interval:
            self._last = now
            typer.echo(json.dumps({"event": "progress", **snap}))

    def summary(self, summary: dict) -> None:
        typer.echo(json.dumps(summary))


class _LiveView:
    """A rich table refreshed in place on the terminal."""

    def __init__(self, interval: float):
        self.interval, self._last = min(interval, 0.25), 0.0
        self.live = Live(
            _table({"tokens": 0}), console=out_console, refresh_per_second=4, transient=False
        )

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        return False

    def progress(self, snap: dict, force: bool = False) -> None:
        now = time.perf_counter()
        if force or now - self._last >= self.interval:
            self._last = now
            self.live.update(_table(snap))

    def summary(self, summary: dict) -> None:
        self.live.update(_table(summary, title="summary"))


def _table(snap: dict, title: str = "streaming") -> Table:
    table = Table(title=title, show_header=False, box=None, pad_edge=False, title_justify="left")
    cache = f"{snap.get('cache_used', 0)} / {snap.get('cache_capacity', '?')}"

    def fmt(x, digits: int = 3):
        return "-" if x is None else f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"

    table.add_row("tokens", fmt(snap.get("tokens", 0)))
    table.add_row("perplexity", fmt(snap.get("ppl")))
    table.add_row("recent perplexity", fmt(snap.get("recent_ppl")))
    table.add_row("tokens/s", fmt(snap.get("tok_per_s"), 1))
    table.add_row("cache slots", cache)
    table.add_row("memory (RSS MiB)", fmt(snap.get("rss_mb"), 0))
    table.add_row("elapsed s", fmt(snap.get("elapsed_s"), 1))
    return table


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
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
) -> None:
    """Stream a text of any length through the model with a fixed KV cache; report perplexity."""
    # Every check on user input happens before the model loads and before anything is written.
    config = cache_config(ctx, method, init, sep, window, capacity, chunk)
    if max_tokens is not None and max_tokens < 1:
        raise ConfigError(f"--max-tokens must be >= 1, got {max_tokens}")
    if every is not None and (every < 1 or checkpoint_path is None):
        raise ConfigError("--every N needs N >= 1 and --checkpoint PATH")
    if not math.isfinite(interval) or interval < 0:
        raise ConfigError(f"--interval must be a number of seconds >= 0, got {interval}")
    if checkpoint_path is not None:
        checkpoint.check_target(checkpoint_path)
    if file == "-" and sys.stdin.isatty():
        raise InputError("no input: give a FILE, or pipe text into `sepcli stream -`")
    with open_input(file) as source:
        lm = load(model, device, dtype)
        engine = StreamEngine(lm.model, config, separator_mask(lm.tokenizer), score=ppl)
        metrics = RunMetrics(engine.capacity)
        meta = {
            "kind": "stream",
            "model": checkpoint.model_fingerprint(lm.model, lm.name),
            "config": config.to_dict(),
        }
        first = len(start_token(lm.tokenizer))  # the BOS the stream starts with, if any
        if resume is not None:
            state = checkpoint.load(resume, meta)
            engine.load_state_dict(state["engine"])
            metrics.load_state_dict(state["metrics"])
            if max_tokens is not None and first + max_tokens <= engine.seen:
                raise ConfigError(
                    f"--max-tokens {max_tokens}: the checkpoint has already read "
                    f"{engine.seen - first} tokens of input, nothing is left to stream"
                )

        resolved = {**config.to_dict(), "capacity": engine.capacity}
        run_info = {
            "model": lm.name,
            "device": str(lm.device),
            "dtype": dtype_name(lm),
            "input": file,
            "max_tokens": max_tokens,
            "resumed_at": engine.seen - first if resume else None,
        }
        err_console.print(
            "[dim]stream: "
            + " ".join(f"{k}={v}" for k, v in {**resolved, **run_info}.items() if v is not None)
            + "[/]"
        )

        stats = ReadStats()
        blocks = stream_tokens(lm.tokenizer, source, stats, max_tokens)
        if resume is not None:  # read past what the checkpoint fed, checking it is the same
            engine.fed, blocks = resume_from(
                blocks, state["engine"].get("input"), engine.seen, head=first
            )
        if checkpoint_path is not None:
            checkpoint.probe(checkpoint_path)  # fail now, not after hours of streaming

        def save() -> None:
            checkpoint.save(checkpoint_path, meta, engine.state_dict(), metrics.state_dict())

        use_json = json_out or not sys.stdout.isatty()
        renderer = _JsonLines(interval) if use_json else _LiveView(interval)
        interrupted, last_saved = False, engine.seen
        with StopFlag() as stop, renderer:
            for piece in engine.run(blocks):
                metrics.update(piece)
                renderer.progress(metrics.snapshot())
                if every and engine.seen - last_saved >= every:
                    save()
                    last_saved = engine.seen
                if stop.requested:
                    interrupted = True
                    break
            failed = None
            if checkpoint_path is not None:
                try:
                    save()
                except CheckpointError as exc:  # reported after the summary, which still counts
                    failed = exc
            summary = {
                "event": "summary",
                **metrics.snapshot(),
                "input_tokens": engine.seen - first,  # read, scored or not (--no-ppl)
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
                f"[dim]checkpoint written to {checkpoint_path} ({engine.seen - first} tokens of "
                "input)[/]"
            )
        if interrupted:
            raise typer.Exit(128 + stop.signum)  # 130 for Ctrl-C, 143 for SIGTERM


def register(app: typer.Typer) -> None:
    app.command("stream")(stream)
