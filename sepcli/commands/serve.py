"""`sepcli serve`: an OpenAI-compatible server whose conversations live on fixed rings.

Thin on purpose: options -> configs, the model loaded, the address bound (so a port in use is a
one-line error), then :mod:`sepcli.serve.app` serves until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer

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
from sepcli.commands.sampling_options import (
    DEFAULT_SAMPLING,
    MaxNewOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    generate_config,
)
from sepcli.errors import ConfigError, InputError
from sepcli.serve.config import ServeConfig

DEFAULTS = ServeConfig()


class _StderrHandler(logging.Handler):
    """The server's log lines (internal errors of one request) as warnings on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        warn(self.format(record))


@guarded
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = DEFAULTS.host,
    port: Annotated[int, typer.Option("--port", help="Port (0: a free one).")] = DEFAULTS.port,
    sessions: Annotated[
        int, typer.Option("--sessions", help="Most conversations held in memory (one ring each).")
    ] = DEFAULTS.sessions,
    session_dir: Annotated[
        Path | None,
        typer.Option(
            "--session-dir",
            help="Keep conversations that leave memory here (and at exit); picked up again "
            "when they return, also after a restart.",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="SEPCLI_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every request (env SEPCLI_API_KEY).",
        ),
    ] = None,
    max_body: Annotated[
        int, typer.Option("--max-body", help="Most bytes in a request body (413 beyond).")
    ] = DEFAULTS.max_body,
    max_tokens_limit: Annotated[
        int,
        typer.Option("--max-tokens-limit", help="Most tokens a request may ask for (400 beyond)."),
    ] = DEFAULTS.max_tokens_limit,
    save_idle: Annotated[
        float,
        typer.Option(
            "--save-idle",
            help="Also write a conversation to --session-dir once idle this many seconds "
            "(0: only when it leaves memory and at exit).",
        ),
    ] = DEFAULTS.save_idle,
    max_new_tokens: MaxNewOpt = str(DEFAULTS.defaults.max_new_tokens),
    temperature: TemperatureOpt = DEFAULT_SAMPLING.temperature,
    top_p: TopPOpt = DEFAULT_SAMPLING.top_p,
    top_k: TopKOpt = DEFAULT_SAMPLING.top_k,
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
    """Serve the model over an OpenAI-compatible API; conversations are never re-encoded."""
    stream = cache_config(ctx, method, init, sep, window, capacity, chunk)
    defaults = generate_config(max_new_tokens, temperature, top_p, top_k, 0, None, False)
    if session_dir is not None and session_dir.exists() and not session_dir.is_dir():
        raise InputError(f"--session-dir {session_dir} is not a directory")
    config = ServeConfig(
        host=host,
        port=port,
        sessions=sessions,
        session_dir=session_dir,
        api_key=api_key,
        max_body=max_body,
        max_tokens_limit=max_tokens_limit,
        save_idle=save_idle,
        defaults=defaults,
    )
    if config.exposed and config.api_key is None:
        warn(f"listening on {host} without --api-key: anyone who can reach it can use it")

    # the server's modules need the `serve` extra; say so in one line if it is missing
    try:
        from sepcli.serve import app
    except ImportError as exc:
        raise ConfigError(
            f"sepcli serve needs the serve extra ({exc.name} is missing): "
            "pip install 'sepcli[serve]'"
        ) from None

    try:
        sock = app.listen(host, port)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with sock:
        lm = load(model, device, dtype, threads)
        server = app.make_server(lm, stream, config)
        logger = logging.getLogger("sepcli.serve")
        logger.addHandler(_StderrHandler())
        logger.propagate = False
        bound = sock.getsockname()[1]
        resolved = {**stream.to_dict(), "capacity": server.model.capacity, **config.to_dict()}
        show_config("serve", {**resolved, "port": bound, **run_info(lm)})
        where = f"[{host}]" if ":" in host else host
        err_console.print(
            f"serving {lm.name} on http://{where}:{bound}/v1 (pid {os.getpid()}; Ctrl-C stops)"
        )
        app.run(server, sock)
    err_console.print(f"[dim]stopped · {server.store.stats()}[/]")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
