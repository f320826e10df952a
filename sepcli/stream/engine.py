"""The streaming loop: tokens -> chunks -> layer-by-layer forward over the ring -> per-token NLL.

One token's path, top to bottom:

1. :meth:`StreamEngine.run` groups incoming token ids into chunks of ``config.chunk``.
2. :meth:`StreamEngine.feed` plans the chunk as *pieces* that fit the cache: the policy evicts
   what must go and says how many tokens fit (sepllm cuts at compression points). Planning only
   touches the ring's index tensors, so every piece's slots and cache positions are known
   before any layer runs.
3. :meth:`StreamEngine._forward` runs the decoder once over the whole chunk: projections, MLP and
   LM head see all the chunk's tokens at once; only attention goes piece by piece, each piece
   writing its pre-RoPE keys/values into its slots and attending over the ring as it stood for
   that piece (:func:`kernels.ring_attention`, RoPE at cache positions). Every token therefore
   sees exactly what it would see fed one at a time (sepllm), at the cost of one forward.
4. The logits at token t score token t+1 in fp32; the last row is carried to the next chunk,
   so the whole stream is scored across chunk boundaries.

The engine never prints: it yields one :class:`PieceStats` per chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import ring_attention, use_triton
from kernels.ring.reference import plan_ring
from sepcli import arch
from sepcli.errors import ConfigError
from sepcli.stream.config import SLIDING, StreamConfig
from sepcli.stream.policy import make_policy
from sepcli.stream.reader import TokenDigest
from sepcli.stream.ring import RingKV
from sepcli.stream.sliding import plan_sliding, sliding_attention


@dataclass(frozen=True)
class PieceStats:
    """What one forward pass (one chunk) did.

    tokens : tokens fed in this chunk.
    scored : tokens whose NLL was computed (the stream's very first token has no prediction).
    nll_sum : sum of their NLL (nats, fp32 log-softmax).
    nll : [scored] per-token NLL, fp32, on CPU.
    cache_used : ring slots in use after the chunk (<= capacity).
    seen : tokens fed since the start of the stream.
    cache_peak : most ring slots in use while the chunk was processed (<= capacity).
    pieces : attention pieces the chunk was cut into (compressions inside it + 1).
    cache_mean : mean over the chunk's tokens of the cache entries each attended to (itself
        included): the paper's "average runtime KV" when averaged over a run.
    """

    tokens: int
    scored: int
    nll_sum: float
    nll: torch.Tensor
    cache_used: int
    seen: int
    cache_peak: int = 0
    pieces: int = 1
    cache_mean: float = 0.0


@dataclass(frozen=True)
class _Piece:
    """One attention step of a chunk: tokens [start, start + n) in ``slots``; the ring's cache
    positions as they stand for this piece (``slot_pos`` [S], ``q_pos`` [n])."""

    start: int
    n: int
    slots: torch.Tensor
    slot_pos: torch.Tensor
    q_pos: torch.Tensor
    used: int


class StreamEngine:
    """Streams token ids through a RoPE decoder with a fixed-size ring KV cache.

    Parameters
    ----------
    model : a HF *ForCausalLM of a family :mod:`sepcli.arch` supports, eval mode.
    config : the cache budget and chunk size.
    separators : [vocab] bool lookup, True for separator ids (:func:`sepcli.separators.separator_mask`).
    score : compute per-token NLL (False skips the LM head: the cache is filled, nothing scored).
    """

    def __init__(self, model, config: StreamConfig, separators: torch.Tensor, score: bool = True):
        self.model = model
        self.config = config
        self.score = score
        self.shape = arch.shape_of(model)
        self.layers = arch.decoder_layers(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        rotary = arch.backbone(model).rotary_emb
        self.inv_freq = rotary.inv_freq.to(self.device, torch.float32)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.capacity = self._capacity(config)
        self.policy = make_policy(config, self.capacity)
        self.separators = separators.to(self.device)
        self.ring = RingKV(
            self.shape.layers,
            self.shape.kv_heads,
            self.shape.head_dim,
            self.capacity,
            device=self.device,
            dtype=self.dtype,
        )
        self.seen = 0  # tokens fed so far = text index of the next token
        self.fed = TokenDigest()  # digest of those tokens: a resume checks its input against it
        self.carry: torch.Tensor | None = None  # [vocab] fp32 logits of the last token fed

    def _capacity(self, config: StreamConfig) -> int:
        context = self.shape.context_length
        if config.method != "full":
            if 0 < context < config.capacity:
                # Cache positions run up to capacity - 1: past the context they were never trained.
                raise ConfigError(
                    f"--capacity {config.capacity} is larger than the model's context of "
                    f"{context} tokens: use a capacity of at most {context}"
                )
            return config.capacity
        if context <= 0:
            raise ConfigError(
                "method 'full' needs the model's context length, and the config has none"
            )
        return context

    # ------------------------------------------------------------------ the loop

    def run(self, blocks: Iterable[Sequence[int]]) -> Iterator[PieceStats]:
        """Feed blocks of token ids of any size, ``config.chunk`` tokens per chunk."""
        chunk, buf = self.config.chunk, []
        for block in blocks:
            buf.extend(block)
            start = 0
            while len(buf) - start >= chunk:
                yield from self.feed(buf[start : start + chunk])
                start += chunk
            del buf[:start]
        if buf:
            yield from self.feed(buf)

    def feed(self, ids: Sequence[int]) -> Iterator[PieceStats]:
        """Process one chunk of token ids in one forward pass."""
        ids = list(ids)
        if not ids:
            return
        self.fed.update(ids)
        ids_t = torch.as_tensor(ids, dtype=torch.int64, device=self.device)
        if self.config.method in SLIDING:
            yield self._chunk_sliding(ids_t)
        else:
            yield self._chunk(ids_t)

    def _plan(self, ids: torch.Tensor) -> list[_Piece]:
        """Evict and claim slots for the whole chunk, piece by piece (index tensors only)."""
        pieces, done, total = [], 0, ids.numel()
        while done < total:
            n = self.policy.make_room(self.ring, total - done)
            text_idx = torch.arange(self.seen + done, self.seen + done + n, device=self.device)
            slots = self.ring.claim(text_idx, self.separators[ids[done : done + n]])
            slot_pos = self.ring.slot_positions()  # (S,) shared by every layer
            # q_pos = L .. L+n-1: the piece continues the cache
            pieces.append(_Piece(done, n, slots, slot_pos, slot_pos[slots], self.ring.used))
            done += n
        return pieces

    @torch.inference_mode()
    def _chunk(self, ids: torch.Tensor) -> PieceStats:
        """ids [P]: plan, forward, score, advance."""
        pieces = self._plan(ids)
        h = self._forward(ids, pieces)  # (1, P, hidden)
        # token j of a piece of n that ends with `used` slots in use sees used - n + 1 + j
        seen_sum = sum(pc.n * pc.used - pc.n * (pc.n - 1) / 2 for pc in pieces)
        return self._score(
            ids, h, max(pc.used for pc in pieces), len(pieces), seen_sum / ids.numel()
        )

    def _score(
        self, ids: torch.Tensor, h: torch.Tensor, peak: int, pieces: int, mean: float
    ) -> PieceStats:
        """Advance past the chunk ids [P] (last hidden states h [1, P, hidden]) and score it."""
        p = ids.numel()
        self.seen += p
        if not self.score:
            empty = torch.zeros(0)
            return PieceStats(p, 0, 0.0, empty, self.ring.used, self.seen, peak, pieces, mean)
        logits = arch.logits(self.model, h)[0]  # (P, V)

        # logits at t score token t+1; the first token of the chunk uses the carried row.
        nll = F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
        if self.carry is not None:
            first = F.cross_entropy(self.carry[None], ids[:1], reduction="none")
            nll = torch.cat((first, nll))
        self.carry = logits[-1].float()
        return PieceStats(
            tokens=p,
            scored=int(nll.numel()),
            nll_sum=float(nll.sum()),
            nll=nll.cpu(),
            cache_used=self.ring.used,
            seen=self.seen,
            cache_peak=peak,
            pieces=pieces,
            cache_mean=mean,
        )

    @torch.inference_mode()
    def _chunk_sliding(self, ids: torch.Tensor) -> PieceStats:
        """streamingllm / window, exact for any chunk (see :mod:`sepcli.stream.sliding`)."""
        p, start = ids.numel(), self.seen
        sinks = self.config.init if self.config.method == "streamingllm" else 0
        ring = self.ring
        old_idx = ring.kept_slots()
        old_text = ring.text_idx[old_idx]
        plan = plan_sliding(
            old_idx,
            old_text,
            start,
            p,
            sinks,
            self.capacity,
            self.inv_freq,
            self.rope_scale,
            self.dtype,
        )
        # The cache after the chunk: the sinks and the last capacity - sinks tokens, as if fed
        # one at a time. Slots are freed and claimed now; each layer reads its old keys before
        # it writes the new ones.
        keep_from = start + p - (self.capacity - sinks)
        ring.free(old_idx[(old_text >= sinks) & (old_text < keep_from)])
        text = torch.arange(start, start + p, device=self.device)
        new = ((text < sinks) | (text >= keep_from)).nonzero().squeeze(-1)
        slots = ring.claim(text[new], self.separators[ids[new]])

        h = arch.embed(self.model, ids[None])  # (1, P, hidden)
        for i, layer in enumerate(self.layers):
            q, k, v = arch.project_qkv(layer, layer.input_layernorm(h), self.shape)
            o = sliding_attention(
                q,
                ring.k[i].index_select(2, old_idx),
                ring.v[i].index_select(2, old_idx),
                k,
                v,
                plan,
                self.shape.scale,
            )
            ring.write(i, slots, k.index_select(2, new), v.index_select(2, new))
            h = h + arch.attention_output(layer, o)
            h = arch.mlp_block(layer, h)
        mean = float(
            text.add(1).clamp(max=self.capacity).double().mean()
        )  # token t sees min(t+1, c)
        return self._score(ids, h, min(start + p, self.capacity), 1, mean)

    def _forward(self, ids: torch.Tensor, pieces: list[_Piece]) -> torch.Tensor:
        """One pass of the decoder layers over a chunk; -> last hidden states [1, P, hidden]."""
        h = arch.embed(self.model, ids[None])  # (1, P, hidden)
        # Slots in use and RoPE tables are the same for every layer: build them once (torch path).
        triton = use_triton(h)
        plans = [
            None
            if triton
            else plan_ring(pc.slot_pos, pc.q_pos, self.inv_freq, self.rope_scale, h.dtype)
            for pc in pieces
        ]
        for i, layer in enumerate(self.layers):
            q, k, v = arch.project_qkv(layer, layer.input_layernorm(h), self.shape)  # (1, H, P, D)
            outs = []
            for pc, plan in zip(pieces, plans, strict=True):
                part = slice(pc.start, pc.start + pc.n)
                qp, kp, vp = (
                    (q, k, v) if len(pieces) == 1 else (q[:, :, part], k[:, :, part], v[:, :, part])
                )
                self.ring.write(i, pc.slots, kp, vp)
                outs.append(
                    ring_attention(
                        qp.contiguous() if triton else qp,
                        self.ring.k[i],
                        self.ring.v[i],
                        pc.slot_pos,
                        pc.q_pos,
                        self.inv_freq,
                        self.shape.scale,
                        self.rope_scale,
                        plan,
                    )
                )  # (1, Hq, n, D)
            o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
            h = h + arch.attention_output(layer, o)
            h = arch.mlp_block(layer, h)
        return h

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "ring": self.ring.state_dict(),
            "seen": self.seen,
            "carry": self.carry,
            "input": self.fed.summary(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.ring.load_state_dict(state["ring"])
        self.seen = int(state["seen"])
        carry = state["carry"]
        self.carry = None if carry is None else carry.to(self.device, torch.float32)
