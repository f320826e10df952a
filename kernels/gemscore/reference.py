"""GemFilter scoring, pure torch: the reference for the Triton kernel and the CPU path.

The last prompt token's query (all heads, after RoPE) is scored against all n keys (after RoPE)
of the filter layer: per-head softmax over the n keys, summed over heads. GQA-aware (each KV
head serves Hq / Hkv query heads) and without an n x n matrix: only one query row exists.
"""

from __future__ import annotations

import torch


def gemfilter_scores_reference(
    q_last: torch.Tensor, keys: torch.Tensor, scale: float
) -> torch.Tensor:
    """Per-head softmax attention of the last query over n keys, summed over query heads.

    Parameters
    ----------
    q_last : [B, Hq, D] the last token's rotated query.
    keys : [B, Hkv, N, D] rotated keys of the filter layer (Hq % Hkv == 0).
    scale : softmax scale (usually D ** -0.5).

    Returns
    -------
    [B, N] float32 scores; each head contributes a distribution summing to 1, so rows sum to Hq.
    """
    b, hq, d = q_last.shape
    hkv = keys.shape[1]
    g = hq // hkv
    q = q_last.view(b, hkv, g, d).to(torch.float32)  # (B, Hkv, G, D)
    logits = torch.einsum("bhgd,bhnd->bhgn", q, keys.to(torch.float32)) * scale  # (B, Hkv, G, N)
    return logits.softmax(dim=-1).sum(dim=(1, 2))  # (B, N)
