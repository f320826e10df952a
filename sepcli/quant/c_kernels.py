"""Where the int8 path finds the C one-token kernels of :mod:`sepcli.kernels.cpu`: built once per
machine into the user cache."""

from __future__ import annotations

from pathlib import Path

from sepcli.cachedir import cache_dir
from sepcli.kernels import cpu


def cpu_kernels() -> cpu.CpuKernels | None:
    """The C one-token kernels, built into the user cache on first use; None where they cannot
    be (:func:`cpu_kernels_missing` says why)."""
    return cpu.load(_kernel_dir())


def cpu_kernels_missing() -> str | None:
    """Why :func:`cpu_kernels` is None, or None."""
    return cpu.why_not(_kernel_dir())


def _kernel_dir() -> Path:
    """The kernels' cache folder: asked when layers are built, never per token (each
    :class:`Int8Linear` keeps the kernels it was packed for)."""
    return cache_dir() / "kernels"
