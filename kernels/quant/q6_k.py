"""Q6_K: 256 weights in 210 bytes: 128 bytes of low 4 bits, 64 of high 2 bits, 16 int8 scales
(one per 16 weights), then d (fp16). Each half of 128 weights h uses low bytes 64h..64h+63 and
high bytes 32h..32h+31: weight i of the half (group g = i // 32, j = i % 32) has low bits from
the low (g < 2) or high (g >= 2) nibble of low byte 64h + 32 (g % 2) + j and high bits
2g..2g+1 of high byte 32h + j; w = d * scale * (code - 32)."""

from __future__ import annotations

import torch

from .layout import QK_K, Format, f16


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    n = raw.shape[0]
    ql = raw[:, 0:128].to(torch.int32).reshape(n, 2, 1, 64)
    low = torch.cat((ql & 15, ql >> 4), dim=2).reshape(n, 2, 4, 32)
    qh = raw[:, 128:192].to(torch.int32).reshape(n, 2, 1, 32)
    high = (qh >> (2 * torch.arange(4, dtype=torch.int32))[:, None]) & 3  # [n, 2, 4, 32]
    code = ((low | (high << 4)) - 32).reshape(n, 16, 16).float()
    scale = raw[:, 192:208].contiguous().view(torch.int8).float()
    return (f16(raw, 208) * scale)[..., None].mul(code).reshape(n, QK_K)


FORMAT = Format("Q6_K", QK_K, 210, dequantize_blocks, halves=(208,), c_type=7)
