"""Q8_0: 32 weights in 34 bytes: d (fp16), then 32 int8 codes; w = d * code."""

from __future__ import annotations

import torch

from .layout import Format, f16


def dequantize_blocks(raw: torch.Tensor) -> torch.Tensor:
    return f16(raw, 0) * raw[:, 2:34].contiguous().view(torch.int8).float()


FORMAT = Format("Q8_0", 32, 34, dequantize_blocks, halves=(0,), c_type=4)
