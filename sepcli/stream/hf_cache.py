"""The same ring cache as a transformers 5.x ``Cache``, for your own ``model(...)`` calls and
for ``model.generate()``.

transformers 5.x attention rotates keys with RoPE *before* calling
``cache.update(k, v, layer_idx)``, assigns query positions from ``get_seq_length()`` and sizes
the causal mask from ``get_mask_sizes()``. So this adapter:

* reports ``get_seq_length() = L``, the tokens kept in the cache: queries get cache positions
  L..L+P-1, exactly what :class:`~sepcli.stream.engine.StreamEngine` uses;
* in ``update`` un-rotates the incoming keys (their positions are known: L..L+P-1), stores
  them pre-RoPE in the ring, and returns all kept keys in text order re-rotated to 0..L+P-1,
  with their values, so HF's plain causal mask over L+P keys is the right one;
* cannot see token ids in ``update``, which SepLLM needs to know separators. Two ways to give
  them:

  - your own loop: feed the input through :meth:`SepLLMCache.steps`, which makes room, records
    the ids, and yields the steps that fit (sepllm may cut a chunk at a compression point;
    streamingllm and window, once the cache is full, go one token per step, so that every
    query sees what it would see fed alone: exact, but slow)::

        cache = SepLLMCache(model, StreamConfig(), separator_mask(tokenizer))
        for step in cache.steps(input_ids):            # input_ids [1, T]
            logits = model(step, cache=cache).logits

  - ``model.generate()``: pass the logits processor of :meth:`SepLLMCache.track_ids`. generate
    calls it after every forward with all the ids fed so far: it sets their separator flags
    (a flag is only read when the cache is compressed, always later) and makes room for the
    next token there, before the model reads ``get_seq_length()`` for the next query
    position (``update`` comes too late for that); ``update`` claims each forward's slots.
    generate also passes ``position_ids`` that count every token ever fed; the attention hands
    them on to ``update``, which rotates the kept keys to the same offset, so every distance is
    the one the ring's cache positions give. The prompt must fit in the cache in one forward
    (prefill a longer one through ``steps`` in your own loop, or use ``sepcli generate``); the
    generation may be as long as you like::

        cache = SepLLMCache(model, StreamConfig(), separator_mask(tokenizer))
        out = model.generate(input_ids, cache=cache, logits_processor=[cache.track_ids()],
                             max_new_tokens=5000)

Batch size 1. Each ``update`` materialises the L+P rotated keys of that layer (the fused
:func:`sepcli.kernels.ring_attention` avoids this copy; use :class:`StreamEngine` for speed).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers import LogitsProcessor
from transformers.cache_utils import Cache, CacheLayerMixin

from sepcli import arch
from sepcli.errors import InputError
from sepcli.kernels.rope import rope_cos_sin, rotate
from sepcli.stream.config import StreamConfig
from sepcli.stream.methods import make_method
from sepcli.stream.ring import RingKV


class _RingLayer(CacheLayerMixin):
    """One decoder layer's view of the shared ring (HF calls these per layer)."""

    is_sliding = False

    def __init__(self, owner: SepLLMCache, index: int):
        super().__init__()
        self.owner, self.index = owner, index
        self.is_initialized = True

    def lazy_initialization(self, key_states, value_states) -> None:  # allocated up front
        return None

    def update(self, key_states, value_states, *args, **kwargs):
        # Llama-family attention passes its own kwargs on, position_ids among them
        positions = (kwargs.get("kwargs") or {}).get("position_ids")
        return self.owner._update(self.index, key_states, value_states, positions)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.past_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.past_length

    def get_max_length(self) -> int:
        return self.owner.capacity

    def reset(self) -> None:
        self.owner.reset_state()


class SepLLMCache(Cache):
    """A fixed ring KV cache under a :class:`StreamConfig` method, usable as ``cache``."""

    def __init__(self, model, config: StreamConfig, separators: torch.Tensor):
        shape = arch.shape_of(model)
        param = next(model.parameters())
        self.config = config
        self.method = make_method(config)
        self.capacity = self.method.ring_slots(shape.context_length)
        self.separators = separators.to(param.device)
        self.rope = arch.rope_of(model)
        self.ring = RingKV.for_model(shape, self.capacity, param.device, param.dtype)
        super().__init__(layers=[_RingLayer(self, i) for i in range(shape.layers)])
        self.reset_state()

    def reset_state(self) -> None:
        self.ring.free(torch.arange(self.capacity, device=self.ring.text_idx.device))
        self.past_length = 0  # tokens in the cache before the current step
        self.seen = 0
        self._slots = self._order = self._new_pos = None
        self._auto = False  # generate(): update() claims each forward's slots (see track_ids)
        self._known = 0  # text indices < _known have their separator flag set

    def track_ids(self) -> LogitsProcessor:
        """The logits processor that lets ``model.generate()`` drive this cache (see above)."""
        self._auto = True
        return _TrackIds(self)

    def _observe(self, ids: torch.Tensor) -> None:
        """ids [T]: every token fed so far; set the separator flags not yet known, then make
        room for the next token (the model reads get_seq_length() before update runs)."""
        ids = ids.to(self.ring.text_idx.device)
        if ids.numel() > self.seen:
            raise InputError("track_ids saw more ids than the cache was fed")
        text = self.ring.text_idx
        new = (text >= self._known) & (text < ids.numel())
        self.ring.is_sep[new] = self.separators[ids[text[new]]]
        self._known = ids.numel()
        self.method.make_room(self.ring, 1)
        self.past_length = self.ring.used

    def _begin(self, step: torch.Tensor | None, n: int) -> None:
        """Claim the slots of n new tokens (``step``: their ids; None: track_ids sets the
        separator flags later)."""
        device = self.ring.text_idx.device
        self.past_length = self.ring.used  # after eviction, before the step
        text_idx = torch.arange(self.seen, self.seen + n, device=device)
        if step is None:
            flags = torch.zeros(n, dtype=torch.bool, device=device)
        else:
            flags = self.separators[step]
        self._slots = self.ring.claim(text_idx, flags)
        self._order = self.ring.kept_slots()  # (L+P,) text order = cache positions 0..L+P-1
        self._new_pos = torch.arange(self.past_length, self.past_length + n, device=device)

    def _plan_forward(self, n: int) -> None:
        """generate(): make room for a forward of n tokens, which cannot be cut into steps."""
        if self.method.make_room(self.ring, n) != n:
            raise InputError(
                f"a forward of {n} tokens does not fit in the cache in one step: prefill a "
                "longer prompt through SepLLMCache.steps() first"
            )
        self._begin(None, n)

    def steps(self, input_ids: torch.Tensor) -> Iterator[torch.Tensor]:
        """Split input_ids [1, T] into steps [1, P] that fit; run the model on each before the next."""
        if input_ids.dim() != 2 or input_ids.shape[0] != 1:
            raise InputError(
                f"SepLLMCache takes input_ids of shape [1, T], got {list(input_ids.shape)}"
            )
        ids = input_ids[0].to(self.ring.text_idx.device)
        done = 0
        while done < ids.numel():
            # the method's rule says how many fit (sliding methods: one at a time once full)
            n = self.method.make_room(self.ring, ids.numel() - done)
            self._begin(ids[done : done + n], n)
            yield input_ids[:, done : done + n]
            self.past_length, self.seen, done = self.ring.used, self.seen + n, done + n
            self._known = self.seen
            self._slots = None

    def _update(
        self,
        layer: int,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        positions: torch.Tensor | None = None,
    ):
        """key_states [1, Hkv, P, D] rotated at positions L..L+P-1 -> all kept K, V [1, Hkv, L+P, D].

        ``positions`` [1, P]: where the model rotated this forward's queries and keys, when it
        says (``generate()`` passes text positions, which run ahead of the cache's). Only
        distances matter to RoPE, so the kept keys are then rotated to the same offset:
        positions - L + (0..L+P-1)."""
        if self._auto and layer == 0:
            self._plan_forward(key_states.shape[2])
        if self._slots is None or key_states.shape[2] != self._slots.numel():
            raise InputError(
                "feed the model through SepLLMCache.steps(input_ids), one step per forward"
            )
        offset = 0 if positions is None else int(positions.reshape(-1)[0]) - self.past_length
        cos, sin = rope_cos_sin(self._new_pos + offset, self.rope.inv_freq)
        k = rotate(key_states / self.rope.scale, cos, -sin)  # undo HF's RoPE: rotate by -angle
        self.ring.write(layer, self._slots, k, value_states)
        keys = self.ring.k[layer].index_select(2, self._order)  # (1, Hkv, L+P, D)
        values = self.ring.v[layer].index_select(2, self._order)
        pos = torch.arange(self._order.numel(), device=keys.device) + offset
        kc, ks = rope_cos_sin(pos, self.rope.inv_freq, self.rope.scale)
        if self._auto and layer == len(self.layers) - 1:  # the forward is done
            self.past_length, self.seen = self.ring.used, self.seen + self._slots.numel()
            self._slots = None
        return rotate(keys, kc, ks), values


class _TrackIds(LogitsProcessor):
    """Passes the ids generate() has fed to the cache; leaves the scores as they are."""

    def __init__(self, cache: SepLLMCache):
        self.cache = cache

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[0] != 1:
            raise InputError("SepLLMCache serves batch size 1")
        self.cache._observe(input_ids[0])
        return scores
