"""What the int8 path holds and runs on, in words and counts, for `sepcli info`."""

from __future__ import annotations

from torch import nn

from sepcli.quant import c_kernels
from sepcli.quant.int8 import Int8Linear


def decode_kernels(model: nn.Module) -> str:
    """What one token at a time (decoding) runs on, in words, for `sepcli info`."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if not layers:
        return "torch"
    kern = c_kernels.cpu_kernels()
    build = "?" if kern is None else kern.isa
    if any(m.q4 is not None for m in layers):
        return f"C kernels ({build}): 4-bit weights, int8 head"
    missing = "" if kern is not None else f" ({c_kernels.cpu_kernels_missing()})"
    if any(m.weight_int4 is not None for m in layers):
        return f"torch's 4-bit kernel{missing}"
    return f"C int8 kernels ({build})" if kern is not None else f"torch int8{missing}"


def int8_weights(model: nn.Module) -> int:
    """Weights held in int8, which ``model.parameters()`` does not list; an LM head tied to the
    embedding is counted once, as in the fp32 model."""
    return sum(
        m.in_features * m.out_features
        for m in model.modules()
        if isinstance(m, Int8Linear) and not m.tied
    )
