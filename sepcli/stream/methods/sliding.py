"""The sliding methods: StreamingLLM (Xiao et al., arXiv 2309.17453: ``init`` attention sinks +
the most recent ``capacity - init`` tokens) and a plain window (the most recent ``capacity``).

Their rule evicts one old token per new token once the cache is full, so a chunk is exact only
with its own attention plan:

Fed one token at a time, StreamingLLM's query t sees the ``init`` sink tokens and the last
``capacity - init`` tokens up to itself (``window``: the last ``capacity``, no sinks), at cache
positions. A chunk of P queries cannot share one cache state: each query has evicted a
different number of old tokens. What makes one forward possible is that cache positions are
contiguous for the recent tokens, so only *distances* matter and they are text distances:

* a recent key i seen by query t sits ``t - i`` positions before it, whatever was evicted;
* a sink s sits at cache position s and the query at ``min(t, capacity - 1)``.

So the recent keys and the queries are rotated at text positions (relative to the chunk, to
keep the angles small), the sinks at their own positions, and a per-query mask gives each query
exactly the window it would have seen. The two RoPE frames are joined in one attention call by
concatenating along the head dimension: ``q' = [q at its sink-frame position, q at its text
position]``, ``k' = [k, 0]`` for sinks and ``[0, k]`` for recent keys, so ``q'.k'`` is the right
dot product for each kind (and the scale stays ``D**-0.5``). Everything here is shared by the
layers of one forward except the keys and values themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepcli.arch import Rope
from sepcli.errors import ConfigError
from sepcli.kernels.rope import rope_cos_sin, rotate
from sepcli.stream.methods.base import ChunkPlan, Method
from sepcli.stream.ring import RingKV


def kept(text: torch.Tensor, newest, sinks: int, capacity: int) -> torch.Tensor:
    """The sliding rule, the one place it is written: once the token of text index ``newest``
    is in, the cache holds the tokens of text index ``text`` (broadcast against ``newest``) that
    are sinks (``< sinks``) or among the last ``capacity - sinks``."""
    return (text < sinks) | (text > newest - (capacity - sinks))


@dataclass(frozen=True)
class SlidingTables:
    """What every layer of one chunk shares.

    old_idx : [L0] ring slots holding the tokens before the chunk, in text order.
    k_cos, k_sin : [L0 + P, R] RoPE of the sources (old tokens, then the chunk's).
    q_text_cos, q_text_sin : [P, R] the queries in the recent-key frame.
    q_sink_cos, q_sink_sin : [P, R] the queries in the sink frame (None: no sinks).
    sink : [L0 + P] bool, the source is a sink; None when there are none.
    bias : [P, L0 + P] additive mask (0 / -inf) in the attention dtype.
    """

    old_idx: torch.Tensor
    k_cos: torch.Tensor
    k_sin: torch.Tensor
    q_text_cos: torch.Tensor
    q_text_sin: torch.Tensor
    q_sink_cos: torch.Tensor | None
    q_sink_sin: torch.Tensor | None
    sink: torch.Tensor | None
    bias: torch.Tensor


def sliding_tables(
    old_idx: torch.Tensor,
    old_text: torch.Tensor,
    start: int,
    n: int,
    sinks: int,
    capacity: int,
    rope: Rope,
    dtype: torch.dtype,
) -> SlidingTables:
    """Plan a chunk of ``n`` tokens starting at text index ``start``.

    old_idx / old_text: the ring's kept slots before the chunk and their text indices (text
    order). ``sinks``: tokens with text index < sinks are kept forever (``init`` for
    streamingllm, 0 for window); the others are kept while within the last ``capacity - sinks``.
    """
    device = old_idx.device
    q_text = torch.arange(start, start + n, device=device)
    src_text = torch.cat((old_text, q_text))
    base = start - capacity  # recent positions relative to the chunk: small angles forever
    is_sink = src_text < sinks
    k_pos = torch.where(is_sink, src_text, src_text - base)
    k_cos, k_sin = rope_cos_sin(k_pos, rope.inv_freq, rope.scale)
    qt_cos, qt_sin = rope_cos_sin(q_text - base, rope.inv_freq, rope.scale)
    causal = src_text[None, :] <= q_text[:, None]
    visible = causal & kept(src_text[None, :], q_text[:, None], sinks, capacity)
    bias = torch.zeros(visible.shape, dtype=dtype, device=device)
    bias.masked_fill_(~visible, float("-inf"))
    qs_cos = qs_sin = sink = None
    if bool(is_sink.any()):
        qs_cos, qs_sin = rope_cos_sin(q_text.clamp(max=capacity - 1), rope.inv_freq, rope.scale)
        sink = is_sink
    return SlidingTables(old_idx, k_cos, k_sin, qt_cos, qt_sin, qs_cos, qs_sin, sink, bias)


def sliding_attention(
    q: torch.Tensor,
    k_old: torch.Tensor,
    v_old: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    plan: SlidingTables,
    scale: float,
) -> torch.Tensor:
    """q [1, Hq, P, D] pre-RoPE; k_old/v_old [1, Hkv, L0, D] (the ring's old tokens in text
    order); k_new/v_new [1, Hkv, P, D] (the chunk's) -> [1, Hq, P, D]."""
    k = rotate(torch.cat((k_old, k_new), dim=2), plan.k_cos, plan.k_sin)
    v = torch.cat((v_old, v_new), dim=2)
    qt = rotate(q, plan.q_text_cos, plan.q_text_sin)
    if plan.sink is not None:
        qs = rotate(q, plan.q_sink_cos, plan.q_sink_sin)
        qt = torch.cat((qs, qt), dim=-1)
        is_sink = plan.sink[:, None]
        k = torch.cat((k * is_sink, k * ~is_sink), dim=-1)
    return F.scaled_dot_product_attention(
        qt, k, v, attn_mask=plan.bias, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


class SlidingChunk(ChunkPlan):
    """A whole chunk in one attention call: the cache after the chunk holds the sinks and the
    last ``capacity - sinks`` tokens, as if fed one at a time. Slots are freed and claimed when
    the plan is built; each layer reads its old keys before it writes the new ones."""

    def __init__(self, ring, ids, start, is_sep, sinks, capacity, rope, scale, dtype):
        p = ids.numel()
        self._old = ring.kept_slots()  # (L0,) text order
        old_text = ring.text_idx[self._old]
        self._tables = sliding_tables(self._old, old_text, start, p, sinks, capacity, rope, dtype)
        self._scale = scale
        newest = start + p - 1
        ring.free(self._old[~kept(old_text, newest, sinks, capacity)])
        text = torch.arange(start, start + p, device=ids.device)
        self._new = kept(text, newest, sinks, capacity).nonzero().squeeze(-1)  # chunk rows kept
        self._slots = ring.claim(text[self._new], is_sep[self._new])
        self.peak = min(start + p, capacity)
        self.steps = 1
        self.mean_seen = float(text.add(1).clamp(max=capacity).double().mean())  # min(t+1, c)

    def attend(self, ring, layer, q, k, v):
        o = sliding_attention(
            q,
            ring.k[layer].index_select(2, self._old),
            ring.v[layer].index_select(2, self._old),
            k,
            v,
            self._tables,
            self._scale,
        )
        ring.write(layer, self._slots, k.index_select(2, self._new), v.index_select(2, self._new))
        return o


class Sliding(Method):
    """Sinks (text index < :attr:`sinks`) kept forever, then the most recent tokens."""

    @property
    def sinks(self) -> int:
        raise NotImplementedError

    def make_room(self, ring: RingKV, want: int) -> int:
        # Once full, one token at a time: evicting for several at once would hide old tokens
        # from the first of them (plan_chunk runs whole chunks exactly instead).
        n = min(want, max(self.capacity - ring.used, 1))
        slots = ring.kept_slots()  # (L,) text order
        if slots.numel():
            text = ring.text_idx[slots]
            newest = int(text[-1]) + n  # text index of the last of the n new tokens
            ring.free(slots[~kept(text, newest, self.sinks, self.capacity)])
        return n

    def plan_chunk(self, ring, ids, start, is_sep, rope, scale, dtype):
        return SlidingChunk(ring, ids, start, is_sep, self.sinks, self.capacity, rope, scale, dtype)


class StreamingLLM(Sliding):
    """``init`` sink tokens + the most recent ``capacity - init`` tokens."""

    name = "streamingllm"
    reads = ("init", "capacity")

    @classmethod
    def check(cls, config) -> None:
        if config.capacity <= config.init:
            raise ConfigError(
                f"--capacity {config.capacity} leaves no room for recent tokens next to "
                f"{config.init} sink tokens"
            )

    @property
    def sinks(self) -> int:
        return self.config.init


class Window(Sliding):
    """The most recent ``capacity`` tokens, no sinks."""

    name = "window"
    reads = ("capacity",)

    @property
    def sinks(self) -> int:
        return 0
