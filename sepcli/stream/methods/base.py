"""The mechanism every cache method shares; a method subclass holds only its keep/evict rule.

A method answers two questions for each chunk of new tokens:

* :meth:`Method.make_room`: up to ``want`` tokens are waiting; evict what must go (on the ring's
  index tensors only) and say how many may be written now;
* :meth:`Method.plan_chunk`: how the chunk's queries attend. The base plan cuts the chunk into
  *steps* at the points ``make_room`` allows (sepllm's compressions), claims the steps' slots up
  front, and lets each step attend over the ring as it stood for that step
  (:func:`sepcli.kernels.ring_attention`): exactly what feeding one token at a time would see,
  in one forward. The sliding methods override it (:mod:`sepcli.stream.methods.sliding`).

A plan is built before any layer runs (slots and RoPE tables are shared by every layer);
:meth:`ChunkPlan.attend` is then called once per layer with that layer's q, k, v.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sepcli.arch import Rope
from sepcli.errors import ConfigError
from sepcli.kernels import ring_attention, use_triton
from sepcli.kernels.ring.reference import plan_ring
from sepcli.stream.ring import RingKV

if TYPE_CHECKING:  # the config validates itself through the method classes
    from sepcli.stream.config import StreamConfig


class ChunkPlan:
    """How one chunk attends: built once, then :meth:`attend` per layer.

    Attributes
    ----------
    peak : most ring slots in use while the chunk ran.
    steps : attention steps the chunk was cut into (compressions inside it + 1).
    mean_seen : mean over the chunk's tokens of the cache entries each attended to, itself
        included (the paper's "average runtime KV" when averaged over a run).
    """

    peak: int
    steps: int
    mean_seen: float

    def attend(
        self, ring: RingKV, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """Write the chunk's pre-RoPE k, v [1, Hkv, P, D] of ``layer`` into the ring and return
        the attention of q [1, Hq, P, D] (pre-RoPE) -> [1, Hq, P, D]."""
        raise NotImplementedError

    def single_step(self) -> _Step | None:
        """For a chunk of one token that attends over the ring at cache positions: its step
        (the slot written, the ring's positions), so a fused kernel can run it; else None."""
        return None


@dataclass(frozen=True)
class _Step:
    """Tokens [start, start + n) of a chunk, written into ``slots``; the ring's cache positions
    as they stand for this step (``slot_pos`` [S]; the step's queries at ``q_pos`` [n])."""

    start: int
    n: int
    slots: torch.Tensor
    slot_pos: torch.Tensor
    q_pos: torch.Tensor
    used: int


class RingSteps(ChunkPlan):
    """The base plan: the chunk in steps, each attending over the ring at cache positions."""

    def __init__(self, steps: list[_Step], rope: Rope, scale: float, dtype: torch.dtype, triton):
        self._steps, self._rope, self._scale, self._triton = steps, rope, scale, triton
        self._dtype = dtype
        self._tables: list | None = None  # built by the first attend: a fused step needs none
        self.peak = max(s.used for s in steps)
        self.steps = len(steps)
        # token j of a step of n that ends with `used` slots in use sees used - n + 1 + j
        total = sum(s.n for s in steps)
        self.mean_seen = sum(s.n * s.used - s.n * (s.n - 1) / 2 for s in steps) / total

    def single_step(self) -> _Step | None:
        one = len(self._steps) == 1 and self._steps[0].n == 1
        return self._steps[0] if one else None

    def tables(self) -> list:
        """Slots in use and RoPE tables per step, the same for every layer: built once."""
        if self._tables is None:
            rope = self._rope
            self._tables = [
                None
                if self._triton
                else plan_ring(s.slot_pos, s.q_pos, rope.inv_freq, rope.scale, self._dtype)
                for s in self._steps
            ]
        return self._tables

    def attend(self, ring, layer, q, k, v):
        outs = []
        whole = len(self._steps) == 1
        for step, table in zip(self._steps, self.tables(), strict=True):
            part = slice(step.start, step.start + step.n)
            qs, ks, vs = (q, k, v) if whole else (q[:, :, part], k[:, :, part], v[:, :, part])
            ring.write(layer, step.slots, ks, vs)
            outs.append(
                ring_attention(
                    qs.contiguous() if self._triton else qs,
                    ring.k[layer],
                    ring.v[layer],
                    step.slot_pos,
                    step.q_pos,
                    self._rope.inv_freq,
                    self._scale,
                    self._rope.scale,
                    table,
                )
            )  # (1, Hq, n, D)
        return outs[0] if whole else torch.cat(outs, dim=2)


class Method:
    """Base class: the ring-step mechanism. A subclass sets ``name`` and ``reads``, implements
    :meth:`make_room`, and may override :meth:`check`, :meth:`max_chunk`, :meth:`ring_slots`,
    :attr:`limit` or :meth:`plan_chunk`.

    name : what ``--method`` calls it.
    reads : the :class:`~sepcli.stream.config.StreamConfig` cache fields (``init``, ``sep``,
        ``window``, ``capacity``) the method reads; the CLI warns about the others.
    """

    name = "?"
    reads: tuple[str, ...] = ()

    @classmethod
    def check(cls, config: StreamConfig) -> None:
        """ConfigError for a budget this method cannot run (``config``'s fields are integers
        in range already)."""

    @classmethod
    def max_chunk(cls, config: StreamConfig) -> tuple[int, str] | None:
        """The most tokens per chunk and the option that sets it, or None: any chunk."""
        return None

    def __init__(self, config: StreamConfig):
        self.config = config
        self.capacity = config.capacity  # ring slots; set by ring_slots()

    def ring_slots(self, context: int) -> int:
        """Slots the ring needs for a model with ``context`` trained positions (0: unknown).
        Cache positions run up to capacity - 1: past the context they were never trained."""
        if 0 < context < self.config.capacity:
            raise ConfigError(
                f"--capacity {self.config.capacity} is larger than the model's context of "
                f"{context} tokens: use a capacity of at most {context}"
            )
        self.capacity = self.config.capacity
        return self.capacity

    @property
    def limit(self) -> int | None:
        """The most tokens one stream may hold (after :meth:`ring_slots`); None: a stream of
        any length, the method evicts."""
        return None

    def make_room(self, ring: RingKV, want: int) -> int:
        """Evict what must go before up to ``want`` new tokens; -> how many fit now (1..want)."""
        raise NotImplementedError

    def plan_chunk(
        self,
        ring: RingKV,
        ids: torch.Tensor,
        start: int,
        is_sep: torch.Tensor,
        rope: Rope,
        scale: float,
        dtype: torch.dtype,
    ) -> ChunkPlan:
        """Evict and claim slots for the chunk ``ids`` [P] (text indices start..start+P-1;
        ``is_sep`` [P] separator flags), step by step as :meth:`make_room` allows."""
        steps, done, total = [], 0, ids.numel()
        while done < total:
            n = self.make_room(ring, total - done)
            text_idx = torch.arange(start + done, start + done + n, device=ids.device)
            slots = ring.claim(text_idx, is_sep[done : done + n])
            slot_pos = ring.slot_positions()  # (S,) shared by every layer
            # q_pos = L .. L+n-1: the step continues the cache
            steps.append(_Step(done, n, slots, slot_pos, slot_pos[slots], ring.used))
            done += n
        return RingSteps(steps, rope, scale, dtype, use_triton(ids))
