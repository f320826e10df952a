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


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor, rope_scale: float = 1.0):
    """cos, sin [..., R] (R = 2 * len(inv_freq)) for integer positions [...], in fp32."""
    freqs = positions.to(torch.float32)[..., None] * inv_freq.to(torch.float32)  # (..., R/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (..., R)
    return emb.cos() * rope_scale, emb.sin() * rope_scale


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Apply RoPE to x [..., T, D] with cos/sin [T, R]; dims past R pass through (partial rotary)."""
    r = cos.shape[-1]
    xf = x.to(torch.float32)
    x_rot, x_pass = xf[..., :r], xf[..., r:]
    half = r // 2
    rot_half = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    out = torch.cat((x_rot * cos + rot_half * sin, x_pass), dim=-1)
    return out.to(x.dtype)


@dataclass(frozen=True)
class RingPlan:
    """What every layer of one forward shares: the slots in use and the RoPE tables.

    idx : [L] slots in use; kpos : [L] their cache positions; k_cos, k_sin : [L, R];
    q_cos, q_sin : [C, R]; visible : [C, L] bool, key position <= query position.
    """

    idx: torch.Tensor
    kpos: torch.Tensor
    k_cos: torch.Tensor
    k_sin: torch.Tensor
    q_cos: torch.Tensor
    q_sin: torch.Tensor
    visible: torch.Tensor


def plan_ring(
    slot_pos: torch.Tensor, q_pos: torch.Tensor, inv_freq: torch.Tensor, rope_scale: float = 1.0
) -> RingPlan:
    """Build once per forward, pass to every layer's call (same result, 30x fewer RoPE tables)."""
    idx = (slot_pos >= 0).nonzero().squeeze(-1)  # (L,) slots actually in use
    kpos = slot_pos[idx]
    kc, ks = rope_cos_sin(kpos, inv_freq, rope_scale)
    qc, qs = rope_cos_sin(q_pos, inv_freq, rope_scale)
    return RingPlan(idx, kpos, kc, ks, qc, qs, kpos[None, :] <= q_pos[:, None])


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
    k = k_ring.index_select(2, plan.idx)  # (B, Hkv, L, D)
    v = v_ring.index_select(2, plan.idx)
    k = rotate(k, plan.k_cos, plan.k_sin)
    qr = rotate(q, plan.q_cos, plan.q_sin)
    out = F.scaled_dot_product_attention(
        qr, k, v, attn_mask=plan.visible, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    # SDPA gives NaN for a fully masked row; such a query saw nothing.
    return torch.nan_to_num(out, nan=0.0)
