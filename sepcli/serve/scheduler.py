"""Generation scheduling: every job on one model thread, a step of each in turn.

The engine runs one stream per forward, so requests of different conversations are
interleaved: each round advances every running job by one step (a prefill chunk, an exchange
of history, or one token), and a request that arrives starts at the next round. A job starts
when a ring is free for it (:meth:`ConversationStore.has_room`: at most ``--sessions`` rings)
and, for a chat turn, when no earlier request is working on its conversation, so one
conversation's requests run one after the other, in the order they came. A cancelled job (its
client went away) is closed before its next step.

The HTTP side (asyncio) and this thread meet in :class:`Job`: the thread puts events on the
job's asyncio queue with ``call_soon_threadsafe``; the request handler awaits them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sepcli.errors import SepcliError
from sepcli.serve.jobs import Counters
from sepcli.serve.sessions import ConversationStore
from sepcli.serve.wire import ApiError

log = logging.getLogger("sepcli.serve")

IDLE_POLL_S = 1.0  # how often an idle scheduler looks for conversations to write


@dataclass(frozen=True)
class Failed:
    """The job's last event: it stopped with this error."""

    error: ApiError


DONE = object()  # the job's last event when it ends normally


class Job:
    """One request's work. ``start(store) -> generator`` is called on the model thread when
    the job may start; ``key`` is the conversation a chat turn continues (None: a new ring)."""

    def __init__(self, start: Callable[[ConversationStore], Iterator], key: str | None):
        self.start, self.key = start, key
        self.loop = asyncio.get_running_loop()
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.work: Iterator | None = None

    def emit(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (the server is exiting)
            pass

    def cancel(self) -> None:
        self.cancelled.set()

    async def next(self):
        return await self.events.get()


class Scheduler:
    """Runs jobs on its own thread until :meth:`stop` (after the running ones finish)."""

    def __init__(self, store: ConversationStore, counters: Counters, save_idle: float = 0.0):
        self.store, self.counters, self.save_idle = store, counters, save_idle
        self._inbox: queue.Queue = queue.Queue()
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="sepcli-model", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: Job) -> Job:
        self.counters.requests += 1
        self._inbox.put(job)
        return job

    def stop(self, timeout: float | None = None) -> None:
        """Finish the jobs there are, then write what the store should keep and end."""
        self._inbox.put(None)
        self._thread.join(timeout)

    def stats(self) -> dict:
        return {"running": len(self._running), "waiting": len(self._waiting)}

    # ------------------------------------------------------------------ the model thread

    def _loop(self) -> None:
        while not (self._stopping and not self._running and not self._waiting):
            self._receive(block=not self._running)
            self._start_waiting()
            for job in list(self._running):
                self._step(job)
            if not self._running and self.save_idle:
                self._guard(lambda: self.store.write_idle(self.save_idle))
        self._guard(self.store.write_all)

    def _receive(self, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=IDLE_POLL_S) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if item is None:
                self._stopping = True
            else:
                self._waiting.append(item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _can_start(self, job: Job) -> bool:
        if job.key is not None and self.store.busy(job.key):
            return False
        return self.store.has_room(job.key)

    def _start_waiting(self) -> None:
        for job in list(self._waiting):
            if job.cancelled.is_set():
                self._waiting.remove(job)
                self.counters.cancelled += 1
                job.emit(DONE)
            elif self._can_start(job):
                self._waiting.remove(job)
                try:
                    job.work = job.start(self.store)
                except Exception as exc:  # noqa: BLE001 - reported to the client, never raised
                    self._fail(job, exc)
                    continue
                self._running.append(job)
                self._step(job, check=False)  # the first step runs the generator's set-up

    def _step(self, job: Job, check: bool = True) -> None:
        if check and job.cancelled.is_set():
            self._running.remove(job)
            self.counters.cancelled += 1
            self._guard(job.work.close)
            job.emit(DONE)
            return
        try:
            event = next(job.work)
        except StopIteration:
            self._running.remove(job)
            job.emit(DONE)
        except Exception as exc:  # noqa: BLE001 - reported to the client, never raised
            self._running.remove(job)
            self._fail(job, exc)
        else:
            if event is not None:
                job.emit(event)

    def _fail(self, job: Job, exc: Exception) -> None:
        self.counters.failed += 1
        if isinstance(exc, ApiError):
            error = exc
        elif isinstance(exc, SepcliError):
            error = ApiError(400, str(exc))
        else:
            log.error("internal error: %s: %s", type(exc).__name__, exc)
            error = ApiError(500, f"internal error: {type(exc).__name__}", code="internal_error")
        job.emit(Failed(error))

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - the model thread must outlive any one failure
            log.error("%s: %s", type(exc).__name__, exc)
