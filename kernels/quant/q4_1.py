"""Q4_1: 32 weights in 20 bytes: d, m (fp16), then 16 bytes of codes as Q4_0;
w = d * code + m."""

from __future__ import annotations

import torch

from .layout import Format, f16, nibbles


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    return f16(raw, 0) * nibbles(raw[:, 4:20]).float() + f16(raw, 2)


FORMAT = Format("Q4_1", 32, 20, dequantize_blocks, halves=(0, 2), c_type=1)
