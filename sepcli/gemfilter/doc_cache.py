"""`--doc-cache PATH`: a document's reading (:mod:`reading`) on disk, for separate invocations.

The file holds the prefix keys and values of every segment and the reading's identity (model
fingerprint and dtype, filter layer, document and token digests, segment layout, template head).
It is used only when that identity equals the current run's; otherwise it is refused with what
differs, or replaced when the user asks (``--rebuild``). Written atomically
(:func:`sepcli.files.write_atomic`); loaded memory-mapped, so a large cache is paged in as the
questions read it.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sepcli.errors import DocCacheError
from sepcli.files import probe_writable, write_atomic
from sepcli.gemfilter.prefix import PrefixKV
from sepcli.gemfilter.reading import DocumentReading
from sepcli.stream import checkpoint

FORMAT = "sepcli-doc-cache/1"
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's container: a damaged cache still starts with it

# How a differing identity field reads in the refusal.
_WHAT = {
    "document_sha256": "the document changed since the cache was written",
    "tokens_sha256": "the document's tokens differ (another tokenizer?)",
    "template_head_sha256": "the chat template's head differs",
}


def _read(path: Path) -> dict | None:
    """The payload, or None when the file is not a readable document cache."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any failure to parse means "not a readable cache"
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == FORMAT else None


def check_target(path: Path, document: str) -> None:
    """Refuse a --doc-cache that is a folder, the document itself, or an existing file that is
    not (even a damaged) sepcli document cache: it is never overwritten."""
    if path.is_dir():
        raise DocCacheError(f"--doc-cache {path} is a directory")
    if document != "-" and path.exists() and path.resolve() == Path(document).resolve():
        raise DocCacheError(f"--doc-cache {path} is the document itself")
    if path.is_file():
        with open(path, "rb") as f:
            magic = f.read(len(_ZIP_MAGIC))
        if magic != _ZIP_MAGIC:
            raise DocCacheError(
                f"--doc-cache {path} exists and is not a sepcli document cache; refusing to "
                "overwrite it (choose another path)"
            )


# Fields that follow from the document: once it changed, saying that is enough.
_FROM_DOCUMENT = ("document_tokens", "tokens_sha256", "segments")


def differences(saved: dict, current: dict) -> list[str]:
    """What differs between a stored identity and the current one, in words."""
    if saved.get("document_sha256") != current.get("document_sha256"):
        saved = {k: v for k, v in saved.items() if k not in _FROM_DOCUMENT}
        current = {k: v for k, v in current.items() if k not in _FROM_DOCUMENT}
    return checkpoint.differences(saved, current, _WHAT)


def load(path: Path, identity: dict) -> DocumentReading | None:
    """The stored reading when ``path`` holds one for ``identity``; None when there is no file.
    DocCacheError when the file is damaged or was made for something else."""
    if not path.exists():
        return None
    t0 = time.perf_counter()
    payload = _read(path)
    if payload is None:
        raise DocCacheError(
            f"--doc-cache {path} is damaged or truncated: use --rebuild to write it again"
        )
    diffs = differences(payload["identity"], identity)
    if diffs:
        raise DocCacheError(
            f"--doc-cache {path} was made for another run: {'; '.join(diffs)} "
            "(--rebuild replaces it)"
        )
    prefixes = [PrefixKV(p["keys"], p["values"], p["queries"]) for p in payload["prefixes"]]
    bounds = [tuple(b) for b in identity["segments"]]
    seconds = time.perf_counter() - t0
    return DocumentReading(identity, payload["head"], bounds, prefixes, seconds, "cache")


def probe(path: Path) -> None:
    """Check now that ``path`` can be written, before the document is read."""
    probe_writable(path, DocCacheError, "document cache")


def save(path: Path, reading: DocumentReading) -> None:
    payload = {
        "format": FORMAT,
        "identity": reading.identity,
        "head": reading.head,
        "prefixes": [
            {"keys": p.keys, "values": p.values, "queries": p.queries} for p in reading.prefixes
        ],
    }
    write_atomic(path, lambda f: torch.save(payload, f), DocCacheError, "document cache")
