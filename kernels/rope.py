"""RoPE, the one implementation: cos/sin tables for any positions, and the rotation.

Pure torch, in fp32 (the rotated values are stored in the input's dtype). Used by the ring
kernels' reference and by every sepcli module that rotates queries or keys itself (the sliding
methods, the one-token step, the transformers cache adapter, GemFilter's filter pass through
:class:`sepcli.arch.Rope`). Layout as in HF: the R rotated dims are two halves that share the
R/2 frequencies; dims past R pass through (partial rotary).
"""

from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, rope_scale: float = 1.0):
    """cos, sin [..., R] (R = 2 * len(inv_freq)) for integer positions [...], in fp32."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)  # (..., R/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (..., R)
    return emb.cos() * rope_scale, emb.sin() * rope_scale


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [..., T, D] with cos/sin [T, R]; dims past R pass through (partial rotary).

    The halves of the rotated dims are (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin), computed
    in the wider of x's and the tables' dtypes and stored in x's dtype: fp32 tables (the ring,
    :func:`rope_cos_sin`) rotate in fp32; tables in x's dtype round as transformers' Llama
    rotation does (GemFilter's filter pass, which runs the model's own first layers).
    """
    r = cos.shape[-1]
    half = r // 2
    c, s = cos[..., :half], sin[..., :half]  # rope_cos_sin repeats the frequencies
    x1, x2 = x[..., :half], x[..., half:r]
    out = torch.empty_like(x)
    torch.sub(x1 * c, x2 * s, out=out[..., :half])
    torch.add(x2 * c, x1 * s, out=out[..., half:r])
    if r < x.shape[-1]:
        out[..., r:] = x[..., r:]
    return out
