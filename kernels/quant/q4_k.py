"""Q4_K: 256 weights in 144 bytes: d, dmin (fp16), 12 bytes of 6-bit scales and mins for the
8 sub-blocks of 32 (:func:`~kernels.quant.layout.k_scales`), then 128 bytes of codes: 32 bytes
per pair of sub-blocks, sub-block 2i in the low nibbles of bytes 32i..32i+31 and 2i + 1 in the
high ones; w = d * scale * code - dmin * min."""

from __future__ import annotations

import torch

from .layout import QK_K, Format, f16, k_scales


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    scale, low = k_scales(raw[:, 4:16])
    q = raw[:, 16:144].to(torch.int32).reshape(n, 4, 1, 32)
    code = torch.cat((q & 15, q >> 4), dim=2).reshape(n, 8, 32).float()
    a = (f16(raw, 0) * scale.float())[..., None]
    b = (f16(raw, 2) * low.float())[..., None]
    return (a * code - b).reshape(n, QK_K)


FORMAT = Format("Q4_K", QK_K, 144, dequantize_blocks, halves=(0, 2), c_type=5)
