"""Exact 4-bit weights: detecting the 16-level grid of a GGUF Q4_1 block in fp32 weights, and
packing it for torch's own 4-bit kernel."""

from __future__ import annotations

import torch

GROUP = 32  # input channels per 4-bit scale and zero: a GGUF Q4_0/Q4_1 block
_CHECK_ROWS = 1024


def torch_int4_pack(
    codes: torch.Tensor, step: torch.Tensor, low: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`exact_int4`'s codes for ``_weight_int4pack_mm_for_cpu``: packed codes and
    [in/32, out, 2] bf16 (scale, zero); the kernel reads (code - 8) * scale + zero, so the
    weight it uses is within bf16 rounding of the original (about 0.4% of a group's step)."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scale_zero = torch.stack((step, low + 8 * step), dim=-1)  # (out, in/32, 2)
    return packed, scale_zero.transpose(0, 1).contiguous().to(torch.bfloat16)


def exact_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """weight [out, in] fp32 -> (codes [out, in] uint8 0..15, step, low [out, in/32] fp32) with
    weight = low + code * step per group of 32 inputs, when it holds exactly 16 evenly spaced
    levels per group, the lowest and highest both used (what GGUF's Q4_1 stores: min + code *
    step); None for any other weight, which 4 bits would round."""
    out, n_in = weight.shape
    if n_in % GROUP or out % 16:  # whole groups; torch's packing takes 16 outputs at a time
        return None
    codes = torch.empty(out, n_in, dtype=torch.uint8)
    step_low = torch.empty(out, n_in // GROUP, 2)
    # A block of rows at a time: an LM head that is not 4-bit fails in its first block, before
    # temporaries the size of its weight pile up.
    for start in range(0, out, _CHECK_ROWS):
        rows = slice(start, start + _CHECK_ROWS)
        groups = weight[rows].reshape(-1, n_in // GROUP, GROUP)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        step = (high - low) / 15
        block = ((groups - low) / step.clamp_min(1e-30)).round_().clamp_(0, 15)
        if ((block * step + low - groups).abs() > 1e-3 * step + 1e-7 * groups.abs()).any():
            return None
        codes[rows] = block.reshape(-1, n_in).to(torch.uint8)
        step_low[rows] = torch.cat((step, low), dim=-1)
    return codes, step_low[..., 0].contiguous(), step_low[..., 1].contiguous()
