"""Argument checks shared by the Triton launchers: each raises ``ValueError`` naming the bad
argument and its value, so a wrong call fails before any kernel is compiled or launched."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def require_tensors(named: dict[str, object]) -> None:
    for name, t in named.items():
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")


def require_heads(hq: int, hkv: int, d: int, max_head_dim: int) -> None:
    """GQA: q heads a multiple of kv heads; head dim within what the kernel tiles."""
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    if not 1 <= d <= max_head_dim:
        raise ValueError(f"head dim {d} is outside 1..{max_head_dim}")


def require_operands(
    lead: str, operands: dict[str, torch.Tensor], others: dict[str, torch.Tensor], interpreted: bool
) -> None:
    """``operands`` (the first is ``lead``): one float dtype, contiguous head dim. Every
    tensor of ``operands`` and ``others`` on the lead's device, which must be CUDA unless the
    kernels were built by the interpreter."""
    ref = operands[lead]
    for name, t in operands.items():
        if t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{name} dtype {t.dtype} is not one of bf16/fp16/fp32")
        if t.dtype != ref.dtype:
            raise ValueError(f"{name} dtype {t.dtype} != {lead} dtype {ref.dtype}")
        if t.stride(-1) != 1:
            raise ValueError(f"{name} must be contiguous in the head dim (strides {t.stride()})")
    for name, t in {**operands, **others}.items():
        if t.device != ref.device:
            raise ValueError(f"{name} is on {t.device}, {lead} is on {ref.device}")
    if not ref.is_cuda and not interpreted:
        raise ValueError(
            f"tensors are on {ref.device}: the Triton kernel needs CUDA "
            "(or TRITON_INTERPRET=1 set before the kernel module is imported)"
        )


def require_scale(scale: float) -> None:
    if not math.isfinite(float(scale)) or float(scale) <= 0:
        raise ValueError(f"scale must be a positive finite number, got {scale}")
