"""The user cache root every cached file of sepcli lives under (tokenizers, C kernels,
calibration results)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """User cache root: ``$SEPCLI_CACHE_DIR``, else ``$XDG_CACHE_HOME/sepcli``, else ``~/.cache/sepcli``."""
    if os.environ.get("SEPCLI_CACHE_DIR"):
        return Path(os.environ["SEPCLI_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "sepcli"
