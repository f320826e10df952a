"""The KV storage of a streaming run: a fixed ring of slots, allocated once, never resized.

Keys are stored *before* RoPE: a slot's key is rotated to the slot's current cache position each
time it is read (by ``kernels.ring_attention``), so evicting tokens never requires rewriting the
keys that stay. Which token a slot holds lives in two small index tensors; eviction only marks
slots free, and new tokens are written into free slots wherever they are.
"""

from __future__ import annotations

import torch

EMPTY = -1


class RingKV:
    """Per-layer pre-RoPE keys and values in ``capacity`` slots plus per-slot bookkeeping.

    Attributes
    ----------
    k, v : [layers, 1, Hkv, capacity, D] in the model dtype, on the model device.
    text_idx : [capacity] int64, index of the slot's token in the stream, ``EMPTY`` if free.
    is_sep : [capacity] bool, the slot's token is a separator.
    """

    def __init__(self, layers: int, kv_heads: int, head_dim: int, capacity: int, *, device, dtype):
        self.capacity = capacity
        self.k = torch.zeros(layers, 1, kv_heads, capacity, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.text_idx = torch.full((capacity,), EMPTY, dtype=torch.int64, device=device)
        self.is_sep = torch.zeros(capacity, dtype=torch.bool, device=device)

    @classmethod
    def for_model(cls, shape, capacity: int, device, dtype) -> RingKV:
        """A ring for a model of :class:`sepcli.arch.Shape` ``shape``."""
        return cls(
            shape.layers, shape.kv_heads, shape.head_dim, capacity, device=device, dtype=dtype
        )

    # ------------------------------------------------------------------ bookkeeping

    @property
    def used(self) -> int:
        """Slots holding a token."""
        return int((self.text_idx != EMPTY).sum())

    def kept_slots(self) -> torch.Tensor:
        """[L] slots in use, ordered by the text position of their token (oldest first)."""
        valid = (self.text_idx != EMPTY).nonzero().squeeze(-1)
        return valid[torch.argsort(self.text_idx[valid])]

    def slot_positions(self) -> torch.Tensor:
        """[capacity] int64 cache position of each slot (its rank in text order), -1 if free."""
        pos = torch.full_like(self.text_idx, EMPTY)
        kept = self.kept_slots()
        pos[kept] = torch.arange(kept.numel(), device=pos.device)
        return pos

    def free(self, slots: torch.Tensor) -> None:
        """Evict: the slots become free (their K/V are left to be overwritten)."""
        self.text_idx[slots] = EMPTY
        self.is_sep[slots] = False

    def claim(self, text_idx: torch.Tensor, is_sep: torch.Tensor) -> torch.Tensor:
        """Reserve free slots for P new tokens ([P] text indices, [P] separator flags); -> [P] slots."""
        free = (self.text_idx == EMPTY).nonzero().squeeze(-1)
        n = text_idx.numel()
        if n > free.numel():  # the method makes room first: a bug, not a user error
            raise RuntimeError(f"ring overflow: {n} new tokens, {free.numel()} free slots")
        slots = free[:n]
        self.text_idx[slots] = text_idx
        self.is_sep[slots] = is_sep
        return slots

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store pre-RoPE k, v [1, Hkv, P, D] of layer ``layer`` into ``slots`` [P]."""
        self.k[layer].index_copy_(2, slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(2, slots, v.to(self.v.dtype))

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {"k": self.k, "v": self.v, "text_idx": self.text_idx, "is_sep": self.is_sep}

    def load_state_dict(self, state: dict) -> None:
        """Copy a saved state into the existing buffers (shapes must match)."""
        for name in ("k", "v", "text_idx", "is_sep"):
            dst, src = getattr(self, name), state[name]
            if tuple(src.shape) != tuple(dst.shape):
                raise ValueError(f"{name}: saved shape {tuple(src.shape)} != {tuple(dst.shape)}")
            dst.copy_(src.to(dst.device))
