"""The filter pass: run the early layers over the whole prompt and score every token at layer r
by the attention of the last token (or of the last W tokens: the question). What is kept for
those scores is :mod:`selection`'s job.

Layers below r run as ordinary causal attention through SDPA (the n x n matrix is never built
by us); at layer r only the keys of all n tokens and the query of the last token are computed,
and :func:`sepcli.kernels.gemfilter_scores` turns them into one score per token (per-head softmax,
summed over query heads, GQA-aware; Triton on CUDA). Layers above r are never called, no KV
cache is kept and activations are dropped as soon as the next layer has them.

Beyond the paper: ``window`` lets the last W prompt tokens vote (their scores are summed).
On SmolLM2-135M the last token alone ranks the needle no better than chance, while the
question's tokens together find it (bench/niah_grid.py, docs/gemfilter.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F

from sepcli import arch
from sepcli.kernels import gemfilter_scores
from sepcli.kernels.rope import rotate


def causal_layer(layer, h, shape: arch.Shape, cos, sin, past=None, mask=None):
    """One decoder layer over hidden h [B, T, hidden] whose tokens sit at the RoPE tables
    cos/sin [T, R]: the early-layer step every filter pass runs.

    past: (k, v) [B, Hkv, P, D] post-RoPE of P earlier tokens, attended before the T new ones
    (then ``mask`` [T, P + T] bool says what each new token sees); None: plain causal.
    -> (h after the layer, q [B, Hq, T, D] post-RoPE, k and v [B, Hkv, P + T, D])."""
    q, k, v = arch.project_qkv(layer, layer.input_layernorm(h), shape)  # (B, H, T, D)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    o = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=mask is None, scale=shape.scale,
        enable_gqa=shape.group > 1,
    )  # (B, Hq, T, D)  # fmt: skip
    return arch.mlp_block(layer, h + arch.attention_output(layer, o)), q, k, v


def filter_head(layer, h, shape: arch.Shape, cos, sin, window: int):
    """Layer r of a filter pass: post-RoPE q of the last ``window`` tokens [B, Hq, W, D] and k of
    all tokens [B, Hkv, T, D]; its attention and MLP never run."""
    q_win, k = arch.project_qk_window(layer, layer.input_layernorm(h), shape, window)
    return rotate(q_win, cos[-window:], sin[-window:]), rotate(k, cos, sin)


def window_scores(q_win: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """Scores [B, T] of the last W queries q_win [B, Hq, W, D] over keys k [B, Hkv, T, D].

    Each query row is one :func:`sepcli.kernels.gemfilter_scores` call over the keys it may see
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
    # the model's own rounding of RoPE (its tables in the hidden dtype): the filter's layers
    # are the model's first layers
    cos, sin = arch.rope_of(model).tables(torch.arange(t, device=ids.device), h.dtype)  # (T, R)
    for i in range(top):
        h, q, k, _ = causal_layer(blocks[i], h, shape, cos, sin)
        if i in wanted:
            yield i, window_scores(q[:, :, -w:], k, shape.scale)
        del q, k
    q_win, k = filter_head(blocks[top], h, shape, cos, sin, w)
    del h
    yield top, window_scores(q_win, k, shape.scale)


def filter_scores(model, ids: torch.Tensor, layer: int, window: int = 1) -> torch.Tensor:
    """Scores [T] (float32, on ids' device) of a single prompt ``ids`` [T] at 0-based ``layer``."""
    ((_, scores),) = list(layer_scores(model, ids.unsqueeze(0), [layer], window))
    return scores[0]
