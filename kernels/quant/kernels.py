"""Which kernel :func:`kernels.quant.matmul` runs for a weight: the C kernels of
:mod:`kernels.cpu` where they load and know the format, else the reference."""

from __future__ import annotations

import torch

from kernels.quant import BlockTensor, reference_matmul


def matmul(x: torch.Tensor, w: BlockTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return reference_matmul(x, w, bias)


def name(w: BlockTensor) -> str:
    return f"torch reference ({w.qtype} dequantised by rows)"
