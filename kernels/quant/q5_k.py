"""Q5_K: 256 weights in 176 bytes: d, dmin (fp16), 12 bytes of scales and mins as Q4_K, 32
bytes of high bits (weight j of sub-block s: bit s of byte j), then 128 bytes of the low 4 bits
laid out as Q4_K's codes; w = d * scale * code - dmin * min."""

from __future__ import annotations

import torch

from .layout import QK_K, Format, f16, k_scales


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    scale, low = k_scales(raw[:, 4:16])
    q = raw[:, 48:176].to(torch.int32).reshape(n, 4, 1, 32)
    code = torch.cat((q & 15, q >> 4), dim=2).reshape(n, 8, 32)
    shifts = torch.arange(8, dtype=torch.int32)[:, None]
    high = (raw[:, 16:48].to(torch.int32)[:, None, :] >> shifts) & 1  # [n, 8, 32]
    code = (code | (high << 4)).float()
    a = (f16(raw, 0) * scale.float())[..., None]
    b = (f16(raw, 2) * low.float())[..., None]
    return (a * code - b).reshape(n, QK_K)


FORMAT = Format("Q5_K", QK_K, 176, dequantize_blocks, halves=(0, 2), c_type=6)
