"""Q5_1: 32 weights in 24 bytes: d, m (fp16), 4 bytes of high bits and 16 of low 4 bits as
Q5_0; w = d * code + m."""

from __future__ import annotations

import torch

from .layout import Format, bits, f16, nibbles


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    code = nibbles(raw[:, 8:24]) | (bits(raw[:, 4:8]) << 4)
    return f16(raw, 0) * code.float() + f16(raw, 2)


FORMAT = Format("Q5_1", 32, 24, dequantize_blocks, halves=(0, 2), c_type=3)
