"""Which kernel :func:`kernels.quant.matmul` runs for a weight: the C kernels of
:mod:`kernels.cpu` where they load and have the format, else the torch reference."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from . import BlockTensor, dequantize, reference_matmul

_folder: Path | None = None


def set_cache_dir(folder: Path | None) -> None:
    """Where the C kernels are built (None: the user cache's ``kernels`` folder)."""
    global _folder
    _folder = folder


def cpu_kernels():
    """The loaded C kernels (:class:`sepcli.kernels.cpu.CpuKernels`) or None."""
    from .. import cpu

    return cpu.load(_cache_dir())


def panels() -> bool:
    """True where the C kernels are loaded with their AVX512-VNNI build: the row kernels and the
    panel GEMM, the block products measured faster than llama.cpp's (docs/models.md)."""
    kern = cpu_kernels()
    return kern is not None and kern.isa == "AVX512-VNNI"


def why_not() -> str | None:
    from .. import cpu

    return cpu.why_not(_cache_dir())


def _cache_dir() -> Path:
    if _folder is not None:
        return _folder
    from sepcli.models import cache_dir  # the user cache's one rule (imported late)

    return cache_dir() / "kernels"


def _c_kernels_for(w: BlockTensor):
    if w.format.c_type < 0 or w.data.device.type != "cpu":
        return None
    return cpu_kernels()


def matmul(x: torch.Tensor, w: BlockTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])
    kern = _c_kernels_for(w)
    if kern is not None and x2.shape[0] > 0:
        y = kern.block_matmul(x2, w, bias, torch.get_num_threads())
    elif w.qtype == "F32":
        y = F.linear(x2.float(), w.data, None if bias is None else bias.float())
    else:
        y = reference_matmul(x2, w, bias)
    return y.reshape(*lead, w.rows)


def dense(w: BlockTensor) -> torch.Tensor:
    kern = _c_kernels_for(w)
    if kern is not None:
        return kern.block_dequant(w, torch.get_num_threads())
    return dequantize(w)


def name(w: BlockTensor) -> str:
    if w.qtype == "F32":
        return "torch fp32"
    kern = _c_kernels_for(w)
    if kern is not None:
        return f"C {kern.isa} ({w.qtype} blocks)"
    why = why_not() if w.format.c_type >= 0 else f"no C kernel for {w.qtype}"
    return f"torch reference ({w.qtype} dequantised by rows{'; ' + why if why else ''})"
