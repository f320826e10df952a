"""Conversations the server holds: found by their history, at most ``--sessions`` in memory,
the rest in ``--session-dir``.

A client sends the whole history every turn. Each conversation is known by the digest of the
messages it has read (:func:`history_key`: role and text of each, chained with SHA-256); its
ring holds their tokens (the engine's own digest of every token fed, :class:`TokenDigest`, goes
into its checkpoint). A request whose history, less the new user message, has the digest of a
held conversation continues it: only the new message's tokens are fed. The server's replies are
matched by the text it returned (surrounding white space aside), so the token ids it generated
stay in the ring as they are; re-tokenising the reply could give other ids. A history that
matches nothing (edited, or never seen) is read afresh into a new ring.

A conversation that leaves memory (the least recently used idle one, when another needs a ring)
is written to ``DIR/<digest>.ckpt``, a chat checkpoint (:mod:`sepcli.stream.checkpoint`), and
read back when a request with its history comes, also after a restart. File names are the
hex digest and nothing else, so no request can name a path: nothing is read or written outside
the folder.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sepcli.errors import CheckpointError
from sepcli.generate.chat import ChatSession
from sepcli.stream import checkpoint

_KEY = re.compile(r"[0-9a-f]{64}")
EMPTY = hashlib.sha256(b"sepcli-serve-history/1").hexdigest()


def extend_key(key: str, role: str, text: str) -> str:
    """The digest of a history after one more message."""
    text = text.strip() if role == "assistant" else text
    item = json.dumps([role, text], ensure_ascii=False).encode()
    return hashlib.sha256(bytes.fromhex(key) + item).hexdigest()


def history_key(messages: list[tuple[str, str]]) -> str:
    """The digest of a list of (role, text) messages."""
    key = EMPTY
    for role, text in messages:
        key = extend_key(key, role, text)
    return key


@dataclass(eq=False)
class Conversation:
    """A conversation in memory. ``key``: the digest of the messages its ring holds (None
    while its first turn runs); ``busy`` while a request works on it; ``dirty`` when it has
    changed since it was last written."""

    session: ChatSession
    key: str | None = None
    busy: bool = False
    dirty: bool = True
    used: float = field(default_factory=time.monotonic)


class ConversationStore:
    """Conversations by key: LRU in memory, checkpoints on disk. Not thread-safe: only the
    scheduler's model thread calls it.

    Parameters
    ----------
    new_session : ``new_session(system) -> ChatSession`` with a fresh ring.
    limit : most rings in memory (conversations, and rings lent with :meth:`lend`).
    folder : where conversations go when they leave memory (None: they are forgotten).
    meta : what a checkpoint must have been written with (command, model, cache config).
    """

    def __init__(
        self,
        new_session: Callable[[str | None], ChatSession],
        limit: int,
        folder: Path | None,
        meta: dict,
    ):
        self.new_session, self.limit, self.folder, self.meta = new_session, limit, folder, meta
        self.held: list[Conversation] = []
        self.lent = 0  # rings lent for one request (completions)
        self.counts = {"from_memory": 0, "from_disk": 0, "new": 0, "written": 0, "evicted": 0}
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ finding

    def _in_memory(self, key: str | None) -> Conversation | None:
        if key is None:
            return None
        return next((c for c in self.held if c.key == key), None)

    def busy(self, key: str) -> bool:
        """A request is working on the conversation with this key: the next waits for it."""
        conv = self._in_memory(key)
        return conv is not None and conv.busy

    def has_room(self, key: str | None = None) -> bool:
        """A request for ``key`` (None: one needing a new ring) could start now."""
        conv = self._in_memory(key)
        if conv is not None:
            return not conv.busy
        return len(self.held) + self.lent < self.limit or any(not c.busy for c in self.held)

    def take(self, key: str, system: str | None) -> tuple[Conversation, str]:
        """The conversation that has read the history with digest ``key``, marked busy, and
        where it came from: "memory", "disk", or "new" (an empty one: read the history)."""
        conv = self._in_memory(key)
        if conv is not None:
            self.counts["from_memory"] += 1
            conv.busy, conv.used = True, time.monotonic()
            return conv, "memory"
        self._make_room()
        session = self._from_disk(key)
        source = "disk" if session is not None else "new"
        self.counts["from_disk" if session is not None else "new"] += 1
        if session is None:
            conv = Conversation(self.new_session(system))
        else:  # it is on disk already: written again only once it changes
            conv = Conversation(session, key, dirty=False)
        conv.busy = True
        self.held.append(conv)
        return conv, source

    def release(self, conv: Conversation, key: str | None) -> None:
        """A request is done with ``conv``, which has now read the history ``key`` (None: its
        state is unknown, it is dropped)."""
        conv.busy, conv.used = False, time.monotonic()
        if key is None:
            self.held.remove(conv)
            return
        if key != conv.key:
            conv.dirty = True
            if conv.key is not None and self.folder is not None:
                self.path(conv.key).unlink(missing_ok=True)  # a stale state of this conversation
            twin = self._in_memory(key)
            if twin is not None:  # another conversation with the very same history: one is enough
                self.held.remove(twin)
        conv.key = key

    def lend(self) -> None:
        """Count a ring a request uses alone (a completion); :meth:`give_back` when done."""
        self._make_room()
        self.lent += 1

    def give_back(self) -> None:
        self.lent -= 1

    # ------------------------------------------------------------------ memory and disk

    def _make_room(self) -> None:
        while len(self.held) + self.lent >= self.limit:
            idle = [c for c in self.held if not c.busy]
            if not idle:
                return  # the scheduler starts no more requests than rings: cannot happen
            oldest = min(idle, key=lambda c: c.used)
            self._write(oldest)
            self.held.remove(oldest)
            self.counts["evicted"] += 1

    def path(self, key: str) -> Path:
        if self.folder is None or not _KEY.fullmatch(key):
            raise ValueError(f"not a conversation key: {key!r}")
        return self.folder / f"{key}.ckpt"

    def _write(self, conv: Conversation) -> None:
        if self.folder is None or conv.key is None or not conv.dirty:
            return
        s = conv.session
        checkpoint.save(self.path(conv.key), self.meta, s.engine.state_dict(), s.state_dict())
        conv.dirty = False
        self.counts["written"] += 1

    def _from_disk(self, key: str) -> ChatSession | None:
        if self.folder is None:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            payload = checkpoint.load(path, self.meta)
        except CheckpointError:
            return None  # another model's or config's, or damaged: read the history afresh
        session = self.new_session(None)
        session.load_state_dict(payload["engine"], payload["metrics"])
        return session

    def write_idle(self, older_than: float) -> None:
        """Write conversations idle for ``older_than`` seconds (they stay in memory)."""
        now = time.monotonic()
        for conv in self.held:
            if not conv.busy and now - conv.used >= older_than:
                self._write(conv)

    def write_all(self) -> None:
        """Write every conversation that is not on disk yet (at shutdown)."""
        for conv in self.held:
            if not conv.busy:
                self._write(conv)

    def stats(self) -> dict:
        return {
            "in_memory": len(self.held),
            "busy": sum(c.busy for c in self.held),
            "limit": self.limit,
            **self.counts,
        }
