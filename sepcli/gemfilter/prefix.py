"""The filter pass cut where the question starts: the document is read once, questions after.

The prompt is template head + document + question tail, and attention is causal, so in layers
0..r the keys and values of the head and the document do not depend on the question.
:func:`prefix_steps` computes them (one segment's head + document tokens);
:func:`question_scores` runs only the question tail through layers 0..r against them and scores
every token at layer r. Every filter pass of ``ask`` is these two steps
(:func:`segments.split_scores`): run in lockstep, one layer at a time, when nothing is kept, or
from a stored :class:`PrefixKV` when many questions share one reading. The arithmetic is the
same either way, so a reused prefix gives bit-for-bit the scores of a fresh pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

from sepcli import arch
from sepcli.gemfilter.filter import causal_layer, filter_head, window_scores
from sepcli.kernels.rope import rotate


@dataclass
class PrefixKV:
    """Layers 0..r of one segment's prefix (template head + document tokens), post-RoPE.

    keys: r + 1 tensors [1, Hkv, P, D] (layers 0..r); values: r tensors [1, Hkv, P, D] (layer
    r needs keys only); queries: [1, Hq, Q, D], layer r's queries of the last Q prefix tokens,
    for a numeric ``--window`` that reaches back into the document (Q = 0 otherwise)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    queries: torch.Tensor

    @property
    def length(self) -> int:
        return int(self.keys[0].shape[2])

    def steps(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The same items :func:`prefix_steps` yields."""
        yield from zip(self.keys, [*self.values, self.queries], strict=True)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values, self.queries])


def query_rows(window: int | None) -> int:
    """Prefix queries layer r must keep for ``window`` (QAConfig.window): a numeric window may
    reach back past a short question into the document; 'question' (None) never does."""
    return window or 0


@torch.inference_mode()
def prefix_steps(
    model, ids: torch.Tensor, layer: int, rows: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(k, v)`` [1, Hkv, P, D] for layers 0..r-1 of prefix ``ids`` [P], then
    ``(k, q)`` for layer r: its keys and the queries of the last ``rows`` tokens
    [1, Hq, min(rows, P), D]. Layers above r never run; the MLP of layer r neither."""
    shape = arch.shape_of(model)
    blocks = arch.decoder_layers(model)
    p = ids.shape[0]
    h = arch.embed(model, ids.unsqueeze(0))  # (1, P, hidden)
    cos, sin = arch.rope_of(model).tables(torch.arange(p, device=ids.device), h.dtype)  # (P, R)
    for i in range(layer):
        h, _, k, v = causal_layer(blocks[i], h, shape, cos, sin)
        yield k.contiguous(), v.contiguous()  # (1, Hkv, P, D)
    w = max(1, min(rows, p))
    q_win, k = filter_head(blocks[layer], h, shape, cos, sin, w)
    yield k.contiguous(), q_win[:, :, w - min(rows, p) :].contiguous()


def read_prefix(model, ids: torch.Tensor, layer: int, rows: int) -> PrefixKV:
    """All of :func:`prefix_steps`, kept: what many questions (or a --doc-cache) reuse."""
    steps = list(prefix_steps(model, ids, layer, rows))
    keys = [k for k, _ in steps]
    values = [v for _, v in steps[:-1]]
    return PrefixKV(keys, values, steps[-1][1])


def _tail_mask(t: int, total: int, device) -> torch.Tensor:
    """[t, total] bool: the tail's query j (at position total - t + j) sees keys 0..itself."""
    keys = torch.arange(total, device=device)
    return keys.unsqueeze(0) <= (total - t + torch.arange(t, device=device)).unsqueeze(1)


@torch.inference_mode()
def question_scores(
    model,
    steps: Iterable[tuple[torch.Tensor, torch.Tensor]],
    prefix_len: int,
    tail: torch.Tensor,
    layer: int,
    window: int,
) -> torch.Tensor:
    """Scores [P + t] (float32, on tail's device) of every token of prefix + ``tail`` [t] at
    layer r, from the prefix's ``steps`` (:func:`prefix_steps` or :meth:`PrefixKV.steps`).

    window: how many of the last tokens' queries score (as in :func:`filter.layer_scores`); the
    ones before the tail come from the prefix's stored queries."""
    shape = arch.shape_of(model)
    blocks = arch.decoder_layers(model)
    t = tail.shape[0]
    total = prefix_len + t
    w = max(1, min(int(window), total))
    h = arch.embed(model, tail.unsqueeze(0))  # (1, t, hidden)
    positions = torch.arange(prefix_len, total, device=tail.device)
    cos, sin = arch.rope_of(model).tables(positions, h.dtype)  # (t, R)
    mask = _tail_mask(t, total, tail.device)
    for i, (k_prefix, other) in enumerate(steps):
        if i == layer:
            q, k, _ = arch.project_qkv(blocks[i], blocks[i].input_layernorm(h), shape)
            keys = torch.cat([k_prefix, rotate(k, cos, sin)], dim=2)  # (1, Hkv, P + t, D)
            q_win = torch.cat([other, rotate(q, cos, sin)], dim=2)[:, :, -w:]  # (1, Hq, w, D)
            if q_win.shape[2] < w:
                raise ValueError(
                    f"the prefix keeps {other.shape[2]} queries, window {w} needs more"
                )
            return window_scores(q_win, keys, shape.scale)[0]
        h, *_ = causal_layer(blocks[i], h, shape, cos, sin, (k_prefix, other), mask)
    raise ValueError(f"the prefix ends before layer {layer}")
