"""The HTTP side: routes, the API key, the body limit, replies and server-sent events.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models`` (also
without the ``/v1`` prefix, as several clients call them) and ``GET /health`` (no key needed:
status, counters, conversations). Every error is OpenAI's error object with its status
(:mod:`~sepcli.serve.wire`); an error in one request never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from sepcli import arch
from sepcli.generate.chat import ChatSession
from sepcli.generate.sampling import stop_ids
from sepcli.separators import separator_mask
from sepcli.serve import jobs, wire
from sepcli.serve.config import ServeConfig
from sepcli.serve.scheduler import DONE, Failed, Job, Scheduler
from sepcli.serve.sessions import ConversationStore, history_key
from sepcli.stream import checkpoint
from sepcli.stream.config import StreamConfig
from sepcli.stream.methods import make_method

log = logging.getLogger("sepcli.serve")


@dataclass
class Server:
    """What the routes share: the settings, the model's name, the scheduler and its store."""

    config: ServeConfig
    name: str
    model: jobs.Model
    store: ConversationStore
    scheduler: Scheduler
    counters: jobs.Counters
    created: int

    @property
    def limits(self) -> wire.Limits:
        return wire.Limits(self.config.max_tokens_limit, self.config.defaults)


def make_server(lm, stream: StreamConfig, config: ServeConfig, separators=None) -> Server:
    """A server for a loaded model (``sepcli.models.LoadedModel``); not started yet.
    ``separators``: the tokenizer's separator lookup, if the caller has it already."""
    if separators is None:
        separators = separator_mask(lm.tokenizer)
    chat_format = "template" if getattr(lm.tokenizer, "chat_template", None) else "plain"
    meta = {
        "kind": "serve",
        "model": checkpoint.model_fingerprint(lm.model, lm.name),
        "config": stream.to_dict(),
        "format": chat_format,
    }

    def new_session(system: str | None) -> ChatSession:
        return ChatSession(lm.model, lm.tokenizer, stream, config.defaults, system, separators)

    store = ConversationStore(new_session, config.sessions, config.session_dir, meta)
    counters = jobs.Counters()
    eos = frozenset(stop_ids(lm.model, lm.tokenizer))
    capacity = make_method(stream).ring_slots(arch.shape_of(lm.model).context_length)
    model = jobs.Model(lm, stream, separators, eos, capacity)
    scheduler = Scheduler(store, counters, config.save_idle)
    return Server(config, lm.name, model, store, scheduler, counters, int(time.time()))


# ---------------------------------------------------------------------- request plumbing


def error_response(exc: wire.ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


def _authorised(server: Server, request: Request) -> None:
    key = server.config.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, token = given.partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())
    if not ok:
        raise wire.ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", None,
                            "invalid_api_key")  # fmt: skip


async def _read_json(server: Server, request: Request) -> dict:
    limit = server.config.max_body
    length = request.headers.get("content-length", "")
    too_big = wire.ApiError(
        413, f"the request body is over {limit} bytes (sepcli serve --max-body)", None,
        "request_too_large",
    )  # fmt: skip
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return wire.parse_body(b"".join(chunks))


def endpoint(fn):
    """A route with the API key checked and every ApiError answered as OpenAI's error."""

    async def route(request: Request):
        server: Server = request.app.state.server
        try:
            _authorised(server, request)
            return await fn(server, request)
        except wire.ApiError as exc:
            return error_response(exc)

    return route


async def _until_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _first(job: Job, request: Request):
    """The job's first event, or None (and the job cancelled) when the client goes first."""
    watch = asyncio.ensure_future(_until_disconnect(request))
    get = asyncio.ensure_future(job.next())
    try:
        await asyncio.wait({watch, get}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    if not get.done():
        get.cancel()
        job.cancel()
        return None
    return get.result()


async def _respond(server: Server, request: Request, job: Job, output, stream: bool):
    """Run the job and answer: one JSON reply, or server-sent events as tokens come."""
    server.scheduler.submit(job)
    first = await _first(job, request)
    if first is None:
        return JSONResponse({}, status_code=499)  # the client has gone: nobody reads this
    if isinstance(first, Failed):
        return error_response(first.error)
    if stream:
        return StreamingResponse(
            _events(job, output, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    event = first
    while event is not DONE:
        if isinstance(event, Failed):
            return error_response(event.error)
        output.chunks(event)
        event = await job.next()
    return JSONResponse(output.body())


async def _events(job: Job, output, event) -> AsyncIterator[str]:
    """Server-sent events of a job; the job is cancelled when the client disconnects (the
    response is then cancelled at its next await, and ``finally`` runs)."""
    try:
        for chunk in output.opening():
            yield wire.sse(chunk)
        while event is not DONE:
            if isinstance(event, Failed):  # after the first event: say it in the stream
                yield wire.sse(event.error.body())
                break
            for chunk in output.chunks(event):
                yield wire.sse(chunk)
            event = await job.next()
        yield wire.sse("[DONE]")
    finally:
        job.cancel()


# ---------------------------------------------------------------------- routes


@endpoint
async def chat_completions(server: Server, request: Request):
    req = wire.parse_chat(await _read_json(server, request), server.limits)
    key = history_key(req.history())
    start = partial(jobs.chat_turn, request=req, key=key, counters=server.counters)
    output = wire.ChatOutput(wire.Reply(server.name, "chat"))
    return await _respond(server, request, Job(start, key), output, req.stream)


@endpoint
async def completions(server: Server, request: Request):
    vocab = len(server.model.lm.tokenizer)
    req = wire.parse_completion(await _read_json(server, request), server.limits, vocab)
    start = partial(jobs.completion, server.model, request=req, counters=server.counters)
    reply = wire.Reply(server.name, "completion")
    output = wire.CompletionOutput(reply, len(req.prompts), req.logprobs is not None)
    return await _respond(server, request, Job(start, None), output, req.stream)


@endpoint
async def models(server: Server, request: Request):
    return JSONResponse(wire.models_list(server.name, server.created))


async def health(request: Request):
    server: Server = request.app.state.server
    body = {
        "status": "ok",
        "model": server.name,
        "counters": server.counters.to_dict(),
        "conversations": server.store.stats(),
        "scheduler": server.scheduler.stats(),
    }
    return JSONResponse(body)


async def _http_error(request: Request, exc: HTTPException):
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path} (see GET /v1/models)"
    else:
        message = f"{request.method} is not allowed on {request.url.path}"
    code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    return error_response(wire.ApiError(exc.status_code, message, None, code))


async def _internal_error(request: Request, exc: Exception):
    log.error("internal error on %s: %s: %s", request.url.path, type(exc).__name__, exc)
    return error_response(wire.ApiError(500, "internal error", None, "internal_error"))


def build_app(server: Server) -> Starlette:
    @asynccontextmanager
    async def lifespan(app):
        server.scheduler.start()
        yield
        # uvicorn has finished the requests in flight: write the conversations, then end
        await asyncio.get_running_loop().run_in_executor(None, server.scheduler.stop)

    routes = []
    for prefix in ("/v1", ""):
        routes += [
            Route(f"{prefix}/chat/completions", chat_completions, methods=["POST"]),
            Route(f"{prefix}/completions", completions, methods=["POST"]),
            Route(f"{prefix}/models", models, methods=["GET"]),
        ]
    routes.append(Route("/health", health, methods=["GET"]))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.server = server
    return app


# ---------------------------------------------------------------------- running


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, but a Ctrl-C or SIGTERM ends it like a normal exit (status 0) after
    the requests in flight finish, instead of raising the signal again at the end."""

    @contextlib.contextmanager
    def capture_signals(self):
        import signal

        signals = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in signals}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    """A bound, listening socket (OSError if the address cannot be had)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def run(server: Server, sock: socket.socket) -> None:
    """Serve on ``sock`` until Ctrl-C or SIGTERM."""
    config = uvicorn.Config(
        build_app(server), log_level="warning", access_log=False, lifespan="on", http="h11"
    )
    _Uvicorn(config).run(sockets=[sock])
