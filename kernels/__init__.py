"""Hot-path kernels. Each has a pure-torch reference (the CPU path) and, on CUDA, a Triton
kernel of the same signature. The public functions here pick the kernel automatically; set
``SEPCLI_KERNELS=reference`` to force the torch reference (for debugging)."""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from .gemscore.reference import gemfilter_scores_reference
from .ring.reference import ring_attention_reference


@functools.cache
def triton_installed() -> bool:
    """Whether triton can be imported (the ``gpu`` extra; CUDA builds of torch bring it)."""
    return importlib.util.find_spec("triton") is not None


def use_triton(t: torch.Tensor) -> bool:
    """Triton on CUDA tensors when it is installed, unless the reference is forced."""
    return (
        t.is_cuda and os.environ.get("SEPCLI_KERNELS", "auto") != "reference" and triton_installed()
    )


def ring_attention(q, k_ring, v_ring, slot_pos, q_pos, inv_freq, scale, rope_scale=1.0, plan=None):
    """See :func:`kernels.ring.reference.ring_attention_reference` for shapes.

    ``plan`` (:func:`kernels.ring.reference.plan_ring`) only serves the torch path:
    the Triton kernel computes RoPE on the fly and ignores it.
    """
    if use_triton(q):
        from .ring.triton_impl import ring_attention_triton

        return ring_attention_triton(
            q, k_ring, v_ring, slot_pos, q_pos, inv_freq, scale, rope_scale
        )
    return ring_attention_reference(
        q, k_ring, v_ring, slot_pos, q_pos, inv_freq, scale, rope_scale, plan
    )


def gemfilter_scores(q_last, keys, scale):
    """See :func:`kernels.gemscore.reference.gemfilter_scores_reference` for shapes."""
    if use_triton(q_last):
        from .gemscore.triton_impl import gemfilter_scores_triton

        return gemfilter_scores_triton(q_last, keys, scale)
    return gemfilter_scores_reference(q_last, keys, scale)
