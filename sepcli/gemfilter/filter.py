"""The filter pass: run the early layers over the whole prompt and score every token at layer r
by the attention of the last token (or of the last W tokens: the question). What is kept for
those scores is :mod:`selection`'s job.

Layers below r run as ordinary causal attention through SDPA (the n x n matrix is never built
by us); at layer r only the keys of all n tokens and the query of the last token are computed,
and :func:`kernels.gemfilter_scores` turns them into one score per token (per-head softmax,
summed over query heads, GQA-aware; Triton on CUDA). Layers above r are never called, no KV
cache is kept and activations are dropped as soon as the next layer has them.

Beyond the paper: ``window`` lets the last W prompt tokens vote (their scores are summed).
On SmolLM2-135M the last token alone ranks the needle no better than chance, while the
question's tokens together find it (bench/niah.py, docs/gemfilter.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from kernels import gemfilter_scores
from sepcli import arch


def window_query_and_keys(layer, normed: torch.Tensor, shape: arch.Shape, window: int):
    """Pre-RoPE q of the last ``window`` tokens [B, Hq, W, D] and k of all tokens [B, Hkv, T, D]."""
    attn = layer.self_attn
    if hasattr(attn, "qkv_proj"):  # fused projection: no cheap way to skip q/v of other tokens
        q, k, _ = arch.project_qkv(layer, normed, shape)
        return q[:, :, -window:], k
    b, t, _ = normed.shape
    d = shape.head_dim
    q = attn.q_proj(normed[:, -window:]).view(b, window, shape.q_heads, d)  # (B, W, Hq, D)
    k = attn.k_proj(normed).view(b, t, shape.kv_heads, d)  # (B, T, Hkv, D)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q.transpose(1, 2), k.transpose(1, 2)


def window_scores(q_win: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Scores [B, T] of the last W queries q_win [B, Hq, W, D] over keys k [B, Hkv, T, D].

    Each query row is one :func:`kernels.gemfilter_scores` call over the keys it may see
    (causal: the query at position p sees keys 0..p); the W rows are summed. W = 1 is the
    paper's rule (the last token only).
    """
    b, _, w, _ = q_win.shape
    t = k.shape[2]
    total = torch.zeros(b, t, dtype=torch.float32, device=k.device)
    for j in range(w):
        p = t - w + j
        total[:, : p + 1] += gemfilter_scores(q_win[:, :, j], k[:, :, : p + 1], scale)
    return total


@torch.inference_mode()
def layer_scores(
    model, ids: torch.Tensor, layers: Iterable[int], window: int = 1
) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(layer, scores [B, T] float32)`` for each requested 0-based layer, in order.

    One pass serves all requested layers (calibration asks for all of them); the pass stops
    at the highest requested layer, whose attention and MLP are not computed.

    ids: [B, T] prompt token ids. window: how many of the last prompt tokens' queries score
    (1 = the last token only, as in the paper; the question's tokens work better on small models).
    """
    wanted = sorted(set(int(i) for i in layers))
    shape = arch.shape_of(model)
    if not wanted or wanted[0] < 0 or wanted[-1] >= shape.layers:
        raise ValueError(f"layers must lie in 0..{shape.layers - 1}, got {wanted}")
    top = wanted[-1]
    blocks = arch.decoder_layers(model)
    b, t = ids.shape
    w = max(1, min(int(window), t))
    h = arch.embed(model, ids)  # (B, T, hidden)
    positions = torch.arange(t, device=ids.device).unsqueeze(0).expand(b, t)
    cos, sin = arch.rope_cos_sin(model, h, positions)  # (B, T, R)
    for i in range(top + 1):
        layer = blocks[i]
        normed = layer.input_layernorm(h)
        if i == top:
            q_win, k = window_query_and_keys(layer, normed, shape, w)
            del normed, h
            q_win = arch.apply_rope(q_win, cos[:, -w:], sin[:, -w:])  # (B, Hq, W, D)
            k = arch.apply_rope(k, cos, sin)  # (B, Hkv, T, D)
            yield i, window_scores(q_win, k, shape.scale)
            return
        q, k, v = arch.project_qkv(layer, normed, shape)
        del normed
        q, k = arch.apply_rope(q, cos, sin), arch.apply_rope(k, cos, sin)
        if i in wanted:
            yield i, window_scores(q[:, :, -w:], k, shape.scale)
        o = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=shape.scale, enable_gqa=shape.group > 1
        )  # (B, Hq, T, D)
        del q, k, v
        h = h + arch.attention_output(layer, o)
        del o
        h = arch.mlp_block(layer, h)


def filter_scores(model, ids: torch.Tensor, layer: int, window: int = 1) -> torch.Tensor:
    """Scores [T] (float32, on ids' device) of a single prompt ``ids`` [T] at 0-based ``layer``."""
    ((_, scores),) = list(layer_scores(model, ids.unsqueeze(0), [layer], window))
    return scores[0]
