"""Q5_0: 32 weights in 22 bytes: d (fp16), 4 bytes holding bit 4 of each code (weight j: bit j,
little-endian), 16 bytes of the low 4 bits as Q4_0; w = d * (code - 16)."""

from __future__ import annotations

import torch

from .layout import Format, bits, f16, nibbles


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    code = nibbles(raw[:, 6:22]) | (bits(raw[:, 2:6]) << 4)
    return f16(raw, 0) * (code - 16).float()


FORMAT = Format("Q5_0", 32, 22, dequantize_blocks, halves=(0,), c_type=2)
