"""F32, F16, BF16: weights stored as plain floats, one a "block"; the data is the typed tensor
[rows, cols] and the reference is a cast."""

from __future__ import annotations

import torch

from .layout import Format

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
FORMATS = {
    name: Format(name, 1, torch.empty(0, dtype=dt).element_size(), None)
    for name, dt in DTYPES.items()
}
