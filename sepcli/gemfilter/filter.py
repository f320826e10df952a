"""The filter pass: run the early layers over the whole prompt, score every token at layer r by
the last token's attention, keep the top k in document order.

Layers below r run as ordinary causal attention through SDPA (the n x n matrix is never built
by us); at layer r only the keys of all n tokens and the query of the last token are computed,
and :func:`kernels.gemfilter_scores` turns them into one score per token (per-head softmax,
summed over query heads, GQA-aware; Triton on CUDA). Layers above r are never called, no KV
cache is kept and activations are dropped as soon as the next layer has them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from kernels import gemfilter_scores
from sepcli import arch


def _last_query_and_keys(layer, normed: torch.Tensor, shape: arch.Shape):
    """Pre-RoPE q of the last token [B, Hq, 1, D] and k of all tokens [B, Hkv, T, D]."""
    attn = layer.self_attn
    if hasattr(attn, "qkv_proj"):  # fused projection: no cheap way to skip q/v of other tokens
        q, k, _ = arch.project_qkv(layer, normed, shape)
        return q[:, :, -1:], k
    b, t, _ = normed.shape
    d = shape.head_dim
    q = attn.q_proj(normed[:, -1:]).view(b, 1, shape.q_heads, d)  # (B, 1, Hq, D)
    k = attn.k_proj(normed).view(b, t, shape.kv_heads, d)  # (B, T, Hkv, D)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q.transpose(1, 2), k.transpose(1, 2)


@torch.inference_mode()
def layer_scores(model, ids: torch.Tensor, layers: Iterable[int]) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer, scores [B, T] float32)`` for each requested 0-based layer, in order.

    One pass serves all requested layers (calibration asks for all of them); the pass stops
    at the highest requested layer, whose attention and MLP are not computed.

    ids: [B, T] prompt token ids.
    """
    wanted = sorted(set(int(i) for i in layers))
    shape = arch.shape_of(model)
    if not wanted or wanted[0] < 0 or wanted[-1] >= shape.layers:
        raise ValueError(f"layers must lie in 0..{shape.layers - 1}, got {wanted}")
    top = wanted[-1]
    blocks = arch.decoder_layers(model)
    b, t = ids.shape
    h = arch.embed(model, ids)  # (B, T, hidden)
    positions = torch.arange(t, device=ids.device).unsqueeze(0).expand(b, t)
    cos, sin = arch.rope_cos_sin(model, h, positions)  # (B, T, R)
    for i in range(top + 1):
        layer = blocks[i]
        normed = layer.input_layernorm(h)
        if i == top:
            q_last, k = _last_query_and_keys(layer, normed, shape)
            del normed, h
            q_last = arch.apply_rope(q_last, cos[:, -1:], sin[:, -1:])  # (B, Hq, 1, D)
            k = arch.apply_rope(k, cos, sin)  # (B, Hkv, T, D)
            yield i, gemfilter_scores(q_last[:, :, 0], k, shape.scale)
            return
        q, k, v = arch.project_qkv(layer, normed, shape)
        del normed
        q, k = arch.apply_rope(q, cos, sin), arch.apply_rope(k, cos, sin)
        if i in wanted:
            yield i, gemfilter_scores(q[:, :, -1], k, shape.scale)
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=shape.scale, enable_gqa=shape.group > 1
        )  # (B, Hq, T, D)
        del q, k, v
        h = h + arch.attention_output(layer, o)
        del o
        h = arch.mlp_block(layer, h)


def filter_scores(model, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Scores [T] (float32, on ids' device) of a single prompt ``ids`` [T] at 0-based ``layer``."""
    ((_, scores),) = list(layer_scores(model, ids.unsqueeze(0), [layer]))
    return scores[0]


def smooth_scores(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average of [T] scores over ``width`` (odd) tokens; edges average what exists."""
    if width <= 1:
        return scores
    pooled = F.avg_pool1d(
        scores.view(1, 1, -1), width, stride=1, padding=width // 2, count_include_pad=False
    )
    return pooled.view(-1)


def select(
    scores: torch.Tensor, k: int, *, smooth: int = 1, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices [min(k, T)] (sorted, document order) of the top-scoring tokens.

    keep: optional [T] bool of tokens kept regardless of score (the question and template);
    they take from the budget first, and the rest of the budget goes to the best other tokens.
    """
    t = scores.shape[-1]
    if k >= t:
        return torch.arange(t, device=scores.device)
    s = smooth_scores(scores.float(), smooth)
    if keep is None or not bool(keep.any()):
        return s.topk(k).indices.sort().values
    keep = keep.to(s.device)
    forced = keep.nonzero().view(-1)
    budget = max(k - forced.numel(), 0)
    others = (~keep).nonzero().view(-1)
    best = others[s[others].topk(min(budget, others.numel())).indices]
    return torch.cat([forced, best]).sort().values
