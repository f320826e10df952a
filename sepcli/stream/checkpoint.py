"""What a checkpoint holds and how a resume checks it: the one module for both.

A checkpoint holds the engine (ring, counters, the last logits, a digest of the tokens fed), the
state of what runs on top of it (a stream's running metrics, a chat's conversation) and what it
was made with (``meta``: the command that wrote it, the model fingerprint, the cache config).
It is written atomically. Resuming with another command, model or config is refused with the
fields that differ, as is a file that is not a readable checkpoint. A resumed stream re-reads the
same input, checks the tokens the checkpoint already fed against their digest and skips them, so
the final perplexity equals an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch

from sepcli import arch
from sepcli.errors import CheckpointError, InputError
from sepcli.files import probe_writable, write_atomic
from sepcli.quant import is_int8
from sepcli.weights.blocks import embedding_rows, is_blocks

FORMAT = "sepcli-stream-checkpoint/1"


def model_fingerprint(model, name: str) -> dict:
    """What must match for a checkpoint to be valid: the model's shape and a weights digest."""
    shape = arch.shape_of(model)
    emb = arch.backbone(model).embed_tokens
    vocab = emb.num_embeddings
    sample = embedding_rows(emb, torch.arange(0, vocab, max(1, vocab // 256))).cpu().contiguous()
    return {
        "name": name,
        "model_type": model.config.model_type,
        "layers": shape.layers,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": int(vocab),
        # int8 linear layers leave the embeddings in fp32: name the quantisation, not them.
        "dtype": weights_dtype(model, emb),
        "weights_sha": hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16],
    }


def run_meta(kind: str, lm, config, **more) -> dict:
    """What a checkpoint records and a resume must match: the command (``kind``) that writes
    it, the model's fingerprint, the cache config, and ``more`` (a chat's prompt ``format``)."""
    return {
        "kind": kind,
        "model": model_fingerprint(lm.model, lm.name),
        "config": config.to_dict(),
        **more,
    }


def weights_dtype(model, emb) -> str:
    """How the weights are held, as --dtype names it: int8, gguf, or the embedding's dtype."""
    if is_int8(model):
        return "int8"
    if is_blocks(model):
        return "gguf"
    return str(emb.weight.dtype).replace("torch.", "")


class Checkpointed:
    """One run's checkpointing: the ``meta`` it records (:func:`run_meta`), restoring a
    checkpoint into the engine and into the state on top of it (``extra``: anything with
    state_dict/load_state_dict), and, for a stream that re-reads its input, skipping what was
    already fed after checking it.

    head : tokens at the start of the engine's stream that are not input (the BOS), so that
        counts shown to the user are tokens of input.
    """

    def __init__(self, meta: dict, engine, extra, head: int = 0):
        self.meta, self.engine, self.extra, self.head = meta, engine, extra, head
        self._saved_input: dict | None = None

    @property
    def input_tokens(self) -> int:
        """Tokens of input the engine has read (restored ones included)."""
        return self.engine.seen - self.head

    def restore(self, path: str | Path) -> None:
        """Load ``path`` (refused unless its meta matches) into the engine and ``extra``."""
        payload = load(path, self.meta)
        self.engine.load_state_dict(payload["engine"])
        # the state on top of the engine; older checkpoints store it under "metrics"
        self.extra.load_state_dict(payload.get("state", payload.get("metrics")))
        self._saved_input = payload["engine"].get("input")

    def skip_fed(self, blocks: Iterable[list[int]]) -> Iterator[list[int]]:
        """The input after what the restored checkpoint fed; InputError unless those first
        tokens are the ones it was made from. The engine's digest continues from them."""
        self.engine.fed, rest = resume_from(
            blocks, self._saved_input, self.engine.seen, head=self.head
        )
        return rest

    def save(self, path: str | Path) -> None:
        save(path, self.meta, self.engine.state_dict(), self.extra.state_dict())


def _read(path: Path):
    """The payload of a checkpoint file, or None when it is not one."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any failure to parse means "not a checkpoint"
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == FORMAT else None


def check_target(path: str | Path) -> None:
    """Refuse a ``--checkpoint`` path that would destroy something else: a folder, or an
    existing file that is not a sepcli checkpoint (the input text itself, say). An existing
    checkpoint may be overwritten: that is how a run resumed from it keeps saving."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"--checkpoint {path} is a directory")
    if path.exists() and _read(path) is None:
        raise CheckpointError(
            f"--checkpoint {path} exists and is not a sepcli checkpoint; "
            "refusing to overwrite it (choose another path)"
        )


def probe(path: str | Path) -> None:
    """Check now that ``path`` can be written, so a run does not find out at its end."""
    probe_writable(Path(path).expanduser(), CheckpointError, "checkpoint")


def save(path: str | Path, meta: dict, engine_state: dict, extra_state: dict) -> None:
    """Write atomically (:func:`sepcli.files.write_atomic`). ``extra_state``: what runs on top
    of the engine (a stream's metrics, a chat's conversation), stored under "state"."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a directory")
    payload = {"format": FORMAT, "meta": meta, "engine": engine_state, "state": extra_state}
    write_atomic(path, lambda f: torch.save(payload, f), CheckpointError, "checkpoint")


def load(path: str | Path, meta: dict) -> dict:
    """Read and check a checkpoint against the current run's ``meta``; -> the payload."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"--resume {path} is a directory, not a checkpoint")
    if not path.is_file():
        raise CheckpointError(f"no such checkpoint: {path}")
    payload = _read(path)
    if payload is None:
        raise CheckpointError(f"{path} is not a readable sepcli checkpoint")
    # ``kind`` names the command that wrote it; checkpoints from before it had one are streams'.
    diffs = differences({"kind": "stream", **payload.get("meta", {})}, meta)
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written for another run: {'; '.join(diffs)}")
    return payload


def differences(
    saved: dict, current: dict, words: dict[str, str] | None = None, prefix: str = ""
) -> list[str]:
    """What differs between two nested dicts, one phrase per differing field: ``words[field]``
    where it has one, else "field is A there, B here" (nested fields dotted: ``model.dtype``).
    The one comparison of a checkpoint's and a document cache's stored identity."""
    words = words or {}
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b, field = saved.get(key), current.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, words, f"{field}.")
        elif a != b:
            out.append(words.get(field) or f"{field} is {a!r} there, {b!r} here")
    return out


def ids_digest(ids: list[int], chain: bytes = b"") -> bytes:
    """SHA-256 of token ids (as int64), after ``chain`` (the digest so far, for a chained one)."""
    return hashlib.sha256(chain + array("q", ids).tobytes()).digest()


class TokenDigest:
    """SHA-256 of a stream of token ids, the same however the stream is cut into blocks.

    Ids are hashed in groups of ``GROUP`` (each group's digest chains the previous one), so the
    value depends only on the ids and their order. A checkpoint records :meth:`summary` (count
    and digest); a resumed run recomputes it from its input and compares.
    """

    GROUP = 4096

    def __init__(self) -> None:
        self._folded = 0  # ids already hashed into the chain
        self._chain = bytes(32)
        self._pending: list[int] = []

    @property
    def tokens(self) -> int:
        return self._folded + len(self._pending)

    def update(self, ids: Iterable[int]) -> None:
        self._pending.extend(ids)
        done = 0
        while len(self._pending) - done >= self.GROUP:
            self._chain = self._hash(self._pending[done : done + self.GROUP])
            done += self.GROUP
        del self._pending[:done]
        self._folded += done

    def _hash(self, ids: list[int]) -> bytes:
        return ids_digest(ids, self._chain)

    def hexdigest(self) -> str:
        return self._hash(self._pending).hex()

    def summary(self) -> dict:
        return {"tokens": self.tokens, "sha256": self.hexdigest()}


def resume_from(
    blocks: Iterable[list[int]], saved: dict | None, n: int, head: int = 0
) -> tuple[TokenDigest, Iterator[list[int]]]:
    """Read the first ``n`` ids of ``blocks`` (what a checkpoint already fed) and check them
    against the checkpoint's ``saved`` :meth:`TokenDigest.summary` (None: an older checkpoint,
    not checked). -> (the digest so far, the rest of the ids). Raises :class:`InputError` when
    the input ends first or differs: resuming needs the input the checkpoint was made from.
    ``head``: ids at the start that are not input (the BOS), left out of the counts in messages."""
    digest, it = TokenDigest(), iter(blocks)
    rest: list[int] = []
    for block in it:
        take = min(len(block), n - digest.tokens)
        digest.update(block[:take])
        if take < len(block):
            rest = block[take:]
            break
        if digest.tokens == n:
            break
    got = digest.summary()
    if got["tokens"] < n:
        raise InputError(
            f"the input ends after {got['tokens'] - head} tokens, before the checkpoint's "
            f"{n - head}: "
            "resume with the input the checkpoint was made from"
        )
    if saved is not None and saved.get("sha256") != got["sha256"]:
        raise InputError(
            f"the input's first {n - head} tokens are not the ones the checkpoint was made from: "
            "resume with the same input"
        )

    def remaining() -> Iterator[list[int]]:
        if rest:
            yield rest
        yield from it

    return digest, remaining()
