"""Ring-buffer attention, pure torch: the reference for the Triton kernel and the CPU path.

Queries attend over the slots of a ring KV cache whose keys are stored *before* RoPE. Each slot
carries its cache position (its rank among the kept tokens); a key is rotated to that position
when it is read, a query to its own position. A query sees every valid slot whose position is
<= its own: the cache plus the chunk's own earlier keys (causal inside the chunk), since the
chunk's keys are written into their slots before attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..rope import rope_cos_sin, rotate

# Read every slot in place once at least this share of the ring is in use.
FULL_ENOUGH = 0.75


@dataclass(frozen=True)
class RingPlan:
    """What every layer of one forward shares: the slots in use and the RoPE tables.

    idx : [L] slots in use, gathered in every layer; or None to read the ring's first ``span``
    slots in place (no copy): when the slots in use are exactly the first ones (a ring that has
    not wrapped yet), or when the ring is nearly full (``span`` = S, empty slots masked);
    kpos : [L] cache positions of the slots read (an empty slot's is 0; ``visible`` masks it);
    k_cos, k_sin : [L, R];
    q_cos, q_sin : [C, R]; visible : [C, L] bool, key position <= query position;
    blind : some query sees no slot at all (its output must be zeroed);
    bias : None, or ``visible`` as an additive mask (0 / -inf) in the attention dtype, which
    spares SDPA converting the bool mask in every layer.
    """

    idx: torch.Tensor | None
    kpos: torch.Tensor
    k_cos: torch.Tensor
    k_sin: torch.Tensor
    q_cos: torch.Tensor
    q_sin: torch.Tensor
    visible: torch.Tensor
    blind: bool
    bias: torch.Tensor | None = None
    span: int = 0


def plan_ring(
    slot_pos: torch.Tensor,
    q_pos: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float = 1.0,
    dtype: torch.dtype | None = None,
) -> RingPlan:
    """Build once per forward, pass to every layer's call (same result, 30x fewer RoPE tables).

    ``dtype``: the queries' dtype, to precompute the additive mask (``RingPlan.bias``)."""
    used = slot_pos >= 0
    n_used = int(used.sum())
    idx, span = None, n_used
    if bool(used[:n_used].all()):  # the first n_used slots: read them in place, the same keys
        kpos = slot_pos[:n_used]
        visible = kpos[None, :] <= q_pos[:, None]
    elif n_used >= FULL_ENOUGH * slot_pos.numel():
        # Nearly full (a ring in steady state): read the slots where they lie and mask the few
        # empty ones, rather than gather the used ones into a copy in every layer.
        span, kpos = slot_pos.numel(), slot_pos.clamp_min(0)
        visible = used[None, :] & (slot_pos[None, :] <= q_pos[:, None])
    else:
        idx = used.nonzero().squeeze(-1)  # (L,) slots actually in use
        kpos = slot_pos[idx]
        visible = kpos[None, :] <= q_pos[:, None]
    kc, ks = rope_cos_sin(kpos, inv_freq, rope_scale)
    qc, qs = rope_cos_sin(q_pos, inv_freq, rope_scale)
    blind = bool(q_pos.numel()) and not bool(visible.any(-1).all())
    bias = None
    if dtype is not None:
        bias = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        bias.masked_fill_(~visible, float("-inf"))
    return RingPlan(idx, kpos, kc, ks, qc, qs, visible, blind, bias, span)


def ring_attention_reference(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    slot_pos: torch.Tensor,
    q_pos: torch.Tensor,
    inv_freq: torch.Tensor,
    scale: float,
    rope_scale: float = 1.0,
    plan: RingPlan | None = None,
) -> torch.Tensor:
    """Attention of C queries over a ring cache of S slots, RoPE applied on the fly.

    Parameters
    ----------
    q : [B, Hq, C, D] pre-RoPE queries.
    k_ring, v_ring : [B, Hkv, S, D] pre-RoPE keys and values in ring slots (Hq % Hkv == 0).
    slot_pos : [S] int64 cache position of each slot, -1 for an empty or evicted slot.
    q_pos : [C] int64 cache positions of the queries.
    inv_freq : [R/2] RoPE inverse frequencies (R <= D).
    scale : softmax scale (usually D ** -0.5).
    rope_scale : multiplier on cos/sin (HF's ``attention_scaling``; 1.0 for plain RoPE).
    plan : optional :func:`plan_ring` of (slot_pos, q_pos, inv_freq, rope_scale), shared by the
        layers of one forward; built here when absent.

    Returns
    -------
    [B, Hq, C, D] in q's dtype. A query that sees no slot returns zeros.
    """
    if plan is None:
        plan = plan_ring(slot_pos, q_pos, inv_freq, rope_scale)
    if plan.idx is None:
        k, v = k_ring[:, :, : plan.span], v_ring[:, :, : plan.span]  # views: (B, Hkv, L, D)
    else:
        k, v = k_ring.index_select(2, plan.idx), v_ring.index_select(2, plan.idx)
    k = rotate(k, plan.k_cos, plan.k_sin)
    qr = rotate(q, plan.q_cos, plan.q_sin)
    mask = plan.bias if plan.bias is not None and plan.bias.dtype == q.dtype else plan.visible
    out = F.scaled_dot_product_attention(
        qr, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    # SDPA gives NaN for a fully masked row; such a query saw nothing.
    return torch.nan_to_num(out, nan=0.0) if plan.blind else out
