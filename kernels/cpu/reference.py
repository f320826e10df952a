"""Pure-torch references for decode.c's products: what the C code computes, written plainly.

The decoder step itself has its reference in :class:`sepcli.stream.one_token.OneToken`'s torch
path (and, further out, transformers' own forward).
"""

from __future__ import annotations

import torch

from . import GROUP, Q4Weight


def quant_groups_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [in] fp32 -> q [in/32, 32] (int values in -127..127, as fp64) and dx [in/32] (fp32):
    x ~ dx * q per group of 32, dx = max|x| / 127, q rounded to nearest, ties to even."""
    g = x.float().reshape(-1, GROUP)
    amax = g.abs().amax(-1)
    inv = torch.where(amax > 1e-30, 127.0 / amax, torch.zeros_like(amax))
    q = torch.round(g * inv[:, None])
    return q.double(), amax / 127.0


def unpack_q4(w: Q4Weight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4Weight -> codes [out, in] (int64), step, low [out, in/32] (fp32)."""
    out = w.codes.shape[0]
    pairs = w.codes.reshape(out, -1, 1, GROUP).to(torch.int64)
    codes = torch.cat((pairs & 15, pairs >> 4), dim=2).reshape(out, -1)
    return codes, w.step.float(), w.min.float()


def dequantize_q4(w: Q4Weight) -> torch.Tensor:
    """The fp32 weight [out, in] a Q4Weight stands for."""
    codes, step, low = unpack_q4(w)
    out = codes.shape[0]
    g = codes.reshape(out, -1, GROUP).float()
    return (low[..., None] + g * step[..., None]).reshape(out, -1)


def q4_matvec_reference(x: torch.Tensor, w: Q4Weight) -> torch.Tensor:
    """What ``sep_q4_matvec`` computes, in fp64: the activation quantised per group, then
    sum_g dx_g * (step_g * codes . q + min_g * sum q) (+ bias) -> [out] fp32."""
    q, dx = quant_groups_reference(x)
    codes, step, low = unpack_q4(w)
    out = codes.shape[0]
    dots = (codes.reshape(out, -1, GROUP).double() * q[None]).sum(-1)  # (out, G)
    y = (dx.double()[None] * (step.double() * dots + low.double() * q.sum(-1)[None])).sum(-1)
    y = y.float()
    return y if w.bias is None else y + w.bias


def block_matmul_reference(x: torch.Tensor, w, bias: torch.Tensor | None = None) -> torch.Tensor:
    """What ``sep_block_matmul`` computes for a :class:`kernels.quant.BlockTensor`, in fp64:
    each token's activation quantised per group of 32 (:func:`quant_groups_reference`), times
    the weight as :func:`kernels.quant.dequantize` gives it (+ bias) -> [T, rows] fp32."""
    from ..quant import dequantize

    rows = []
    for t in x.float():
        q, dx = quant_groups_reference(t)
        rows.append((q * dx.double()[:, None]).reshape(-1))
    y = (torch.stack(rows) @ dequantize(w).double().T).float()
    return y if bias is None else y + bias
