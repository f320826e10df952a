"""Stopping a long run cleanly: Ctrl-C or SIGTERM ask the loop to stop at the next safe point.

The command checks ``flag.requested`` between chunks (or batches, or tokens), writes what it has
(a summary, a checkpoint, finished records) and exits with 128 + the signal number.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class StopFlag:
    """Ctrl-C / SIGTERM ask the loop to stop after the current piece (a second Ctrl-C aborts).

    Inside :meth:`interruptible` the first signal stops at once instead (KeyboardInterrupt, with
    ``requested`` set): for work that may take long and is dropped whole, such as a batch of
    `score` whose records are not yet written."""

    def __init__(self):
        self.requested = False
        self.signum = 0  # the signal that asked to stop
        self._saved = {}
        self._at_once = False

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self._at_once = True
        try:
            if self.requested:  # asked while the last piece was being written
                raise KeyboardInterrupt
            yield
        finally:
            self._at_once = False

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        if self._at_once:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        return False
