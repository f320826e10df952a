"""The same ring cache as a transformers 5.x ``Cache``, for your own ``model(...)`` calls.

transformers 5.x attention rotates keys with RoPE *before* calling
``past_key_values.update(k, v, layer_idx)``, assigns query positions from
``get_seq_length()`` and sizes the causal mask from ``get_mask_sizes()``. So this adapter:

* reports ``get_seq_length() = L``, the tokens kept in the cache: queries get cache positions
  L..L+P-1, exactly what :class:`~sepcli.stream.engine.StreamEngine` uses;
* in ``update`` un-rotates the incoming keys (their positions are known: L..L+P-1), stores
  them pre-RoPE in the ring, and returns all kept keys in text order re-rotated to 0..L+P-1,
  with their values, so HF's plain causal mask over L+P keys is the right one;
* cannot see token ids in ``update``, which SepLLM needs to know separators: you feed the
  input through :meth:`SepLLMCache.steps`, which makes room, records the ids, and yields
  the steps that fit (sepllm may cut a chunk at a compression point; streamingllm and window,
  once the cache is full, go one token per step, so that every query sees what it would see
  fed alone: exact, but slow; :class:`StreamEngine` runs them exactly in whole chunks).

Batch size 1. Each ``update`` materialises the L+P rotated keys of that layer (the fused
:func:`kernels.ring_attention` avoids this copy; use :class:`StreamEngine` for speed)::

    cache = SepLLMCache(model, StreamConfig(), separator_mask(tokenizer))
    for step in cache.steps(input_ids):            # input_ids [1, T]
        logits = model(step, past_key_values=cache).logits
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from kernels.ring.reference import rope_cos_sin, rotate
from sepcli import arch
from sepcli.errors import InputError
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
        return self.owner._update(self.index, key_states, value_states)

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.past_length + query_length, 0

    def get_seq_length(self) -> int:
        return self.owner.past_length

    def get_max_length(self) -> int:
        return self.owner.capacity

    def reset(self) -> None:
        self.owner.reset_state()


class SepLLMCache(Cache):
    """A fixed ring KV cache under a :class:`StreamConfig` method, usable as ``past_key_values``."""

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
            step = ids[done : done + n]
            self.past_length = self.ring.used  # after eviction, before the step
            text_idx = torch.arange(self.seen, self.seen + n, device=ids.device)
            self._slots = self.ring.claim(text_idx, self.separators[step])
            self._order = self.ring.kept_slots()  # (L+P,) text order = cache positions 0..L+P-1
            self._new_pos = torch.arange(self.past_length, self.past_length + n, device=ids.device)
            yield input_ids[:, done : done + n]
            self.past_length, self.seen, done = self.ring.used, self.seen + n, done + n
            self._slots = None

    def _update(self, layer: int, key_states: torch.Tensor, value_states: torch.Tensor):
        """key_states [1, Hkv, P, D] rotated at positions L..L+P-1 -> all kept K, V [1, Hkv, L+P, D]."""
        if self._slots is None or key_states.shape[2] != self._slots.numel():
            raise InputError(
                "feed the model through SepLLMCache.steps(input_ids), one step per forward"
            )
        cos, sin = rope_cos_sin(self._new_pos, self.rope.inv_freq)
        k = rotate(key_states / self.rope.scale, cos, -sin)  # undo HF's RoPE: rotate by -angle
        self.ring.write(layer, self._slots, k, value_states)
        keys = self.ring.k[layer].index_select(2, self._order)  # (1, Hkv, L+P, D)
        values = self.ring.v[layer].index_select(2, self._order)
        pos = torch.arange(self._order.numel(), device=keys.device)
        kc, ks = rope_cos_sin(pos, self.rope.inv_freq, self.rope.scale)
        return rotate(keys, kc, ks), values
