"""What every block format module declares, and the small unpacking helpers their references
share. A format is a :class:`Format`: its name (a ``gguf.GGMLQuantizationType`` name), weights
and bytes per block, its pure-torch reference dequantisation of raw blocks, and its number in
the C kernels' table of types (``kernels/cpu/blocks.h``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

QK_K = 256  # weights per K-quant super-block


@dataclass(frozen=True)
class Format:
    """One weight format.

    name : "Q4_K", ...; weights, nbytes : per block (a float type: 1 weight, its item size);
    dequantize : raw blocks uint8 [n, nbytes] -> fp32 [n, weights] (quantized types only);
    halves : byte offsets of the block's fp16 fields (its scales);
    c_type : the format's number in kernels/cpu/blocks.h (-1: no C kernel).
    """

    name: str
    weights: int
    nbytes: int
    dequantize: Callable[[torch.Tensor], torch.Tensor] | None
    halves: tuple[int, ...] = ()
    c_type: int = -1

    @property
    def quantized(self) -> bool:
        return self.dequantize is not None


def f16(raw: torch.Tensor, at: int) -> torch.Tensor:
    """The fp16 stored at byte ``at`` of every block, as fp32 [n, 1]."""
    return raw[:, at : at + 2].contiguous().view(torch.float16).float()


def nibbles(qs: torch.Tensor) -> torch.Tensor:
    """bytes [n, k] -> [n, 2k] int32: the k low nibbles, then the k high ones."""
    q = qs.to(torch.int32)
    return torch.cat((q & 15, q >> 4), dim=-1)


def bits(raw: torch.Tensor) -> torch.Tensor:
    """bytes [n, k] -> [n, 8k] int32: bit j of the little-endian bit string (byte j // 8)."""
    shifts = torch.arange(8, dtype=torch.int32)
    return ((raw.to(torch.int32)[..., None] >> shifts) & 1).reshape(raw.shape[0], -1)


def k_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 bytes of Q4_K/Q5_K scales [n, 12] -> 6-bit scales and mins [n, 8] (int32):
    sub-block j < 4: low 6 bits of byte j (scale) and j + 4 (min); j >= 4: the low (scale) or
    high (min) nibble of byte j + 4, with the top two bits of byte j - 4 (scale) or j (min)."""
    s = s.to(torch.int32)
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scale = torch.cat((a & 63, (c & 15) | ((a >> 6) << 4)), dim=-1)
    low = torch.cat((b & 63, (c >> 4) | ((b >> 6) << 4)), dim=-1)
    return scale, low
