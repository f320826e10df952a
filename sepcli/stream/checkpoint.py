"""Save and restore a stream mid-way: ring, counters and running metrics, written atomically.

A checkpoint records what it was made with (model fingerprint + stream config); resuming with
anything else is refused, as is a file that is not a readable checkpoint. Resuming re-reads the
same input and skips the tokens already fed, so the final perplexity equals an uninterrupted run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from sepcli import arch
from sepcli.errors import CheckpointError
from sepcli.files import probe_writable, write_atomic

FORMAT = "sepcli-stream-checkpoint/1"


def model_fingerprint(model, name: str) -> dict:
    """What must match for a checkpoint to be valid: the model's shape and a weights digest."""
    shape = arch.shape_of(model)
    emb = arch.backbone(model).embed_tokens.weight
    sample = emb[:: max(1, emb.shape[0] // 256)].detach().float().cpu().contiguous()
    return {
        "name": name,
        "model_type": model.config.model_type,
        "layers": shape.layers,
        "kv_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": int(emb.shape[0]),
        "dtype": str(emb.dtype).replace("torch.", ""),
        "weights_sha": hashlib.sha256(sample.numpy().tobytes()).hexdigest()[:16],
    }


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


def save(path: str | Path, meta: dict, engine_state: dict, metrics_state: dict) -> None:
    """Write atomically (:func:`sepcli.files.write_atomic`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {path} is a directory")
    payload = {"format": FORMAT, "meta": meta, "engine": engine_state, "metrics": metrics_state}
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
    diffs = _differences({"kind": "stream", **payload.get("meta", {})}, meta)
    if diffs:
        raise CheckpointError(f"checkpoint {path} was written for another run: {'; '.join(diffs)}")
    return payload


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} is {a!r} there, {b!r} here")
    return out
