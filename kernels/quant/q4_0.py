"""Q4_0: 32 weights in 18 bytes: d (fp16), then 16 bytes of 4-bit codes (weight j < 16 in the
low nibble of byte j, weight 16 + j in its high nibble); w = d * (code - 8)."""

from __future__ import annotations

import torch

from .layout import Format, f16, nibbles


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    return f16(raw, 0) * (nibbles(raw[:, 2:18]) - 8).float()


FORMAT = Format("Q4_0", 32, 18, dequantize_blocks, halves=(0,), c_type=0)
