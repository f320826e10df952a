"""The streaming loop: tokens -> pieces -> layer-by-layer forward over the ring -> per-token NLL.

One token's path, top to bottom:

1. :meth:`StreamEngine.run` groups incoming token ids into chunks of ``config.chunk``.
2. :meth:`StreamEngine.feed` cuts a chunk into pieces; the policy evicts what must go and says
   how many tokens fit (sepllm cuts at compression points, so chunking is exact).
3. :meth:`StreamEngine._forward` writes each layer's pre-RoPE keys/values of the piece into free
   ring slots and attends over the ring with RoPE at cache positions
   (:func:`kernels.ring_attention`): slots get their rank among kept tokens, the piece's
   queries continue from there.
4. The logits at token t score token t+1 in fp32; the last row is carried to the next piece,
   so the whole stream is scored across piece and chunk boundaries.

The engine never prints: it yields one :class:`PieceStats` per piece.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels import ring_attention, use_triton
from kernels.ring_attention.reference import plan_ring
from sepcli import arch
from sepcli.errors import ConfigError
from sepcli.stream.config import StreamConfig
from sepcli.stream.policy import make_policy
from sepcli.stream.ring import RingKV


@dataclass(frozen=True)
class PieceStats:
    """What one forward pass did.

    tokens : tokens fed in this piece.
    scored : tokens whose NLL was computed (the stream's very first token has no prediction).
    nll_sum : sum of their NLL (nats, fp32 log-softmax).
    nll : [scored] per-token NLL, fp32, on CPU.
    cache_used : ring slots in use after the piece (<= capacity).
    seen : tokens fed since the start of the stream.
    """

    tokens: int
    scored: int
    nll_sum: float
    nll: torch.Tensor
    cache_used: int
    seen: int


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
        self.carry: torch.Tensor | None = None  # [vocab] fp32 logits of the last token fed

    def _capacity(self, config: StreamConfig) -> int:
        if config.method != "full":
            return config.capacity
        if self.shape.context_length <= 0:
            raise ConfigError(
                "method 'full' needs the model's context length, and the config has none"
            )
        return self.shape.context_length

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
        """Process one chunk of token ids, as pieces that fit the cache."""
        ids_t = torch.as_tensor(list(ids), dtype=torch.int64, device=self.device)
        done = 0
        while done < ids_t.numel():
            n = self.policy.make_room(self.ring, ids_t.numel() - done)
            yield self._piece(ids_t[done : done + n])
            done += n

    @torch.inference_mode()
    def _piece(self, ids: torch.Tensor) -> PieceStats:
        """ids [P], already given room by the policy: forward, score, advance."""
        p = ids.numel()
        text_idx = torch.arange(self.seen, self.seen + p, device=self.device)
        slots = self.ring.claim(text_idx, self.separators[ids])
        slot_pos = self.ring.slot_positions()  # (S,) shared by every layer
        q_pos = slot_pos[slots]  # (P,) = L .. L+P-1: the piece continues the cache
        h = self._forward(ids, slots, slot_pos, q_pos)  # (1, P, hidden)
        self.seen += p
        if not self.score:
            empty = torch.zeros(0)
            return PieceStats(p, 0, 0.0, empty, self.ring.used, self.seen)
        logits = arch.logits(self.model, h)[0]  # (P, V)

        # logits at t score token t+1; the first token of the piece uses the carried row.
        rows, targets = logits[:-1], ids[1:]
        if self.carry is not None:
            rows, targets = torch.cat((self.carry[None], rows)), ids
        nll = F.cross_entropy(rows.float(), targets, reduction="none")
        self.carry = logits[-1].float()
        return PieceStats(
            tokens=p,
            scored=int(nll.numel()),
            nll_sum=float(nll.sum()),
            nll=nll.cpu(),
            cache_used=self.ring.used,
            seen=self.seen,
        )

    def _forward(self, ids, slots, slot_pos, q_pos) -> torch.Tensor:
        """One pass of the decoder layers over a piece; -> last hidden states [1, P, hidden]."""
        h = arch.embed(self.model, ids[None])  # (1, P, hidden)
        # Slots in use and RoPE tables are the same for every layer: build them once (torch path).
        plan = None if use_triton(h) else plan_ring(slot_pos, q_pos, self.inv_freq, self.rope_scale)
        for i, layer in enumerate(self.layers):
            q, k, v = arch.project_qkv(layer, layer.input_layernorm(h), self.shape)  # (1, H, P, D)
            self.ring.write(i, slots, k, v)
            o = ring_attention(
                q,
                self.ring.k[i],
                self.ring.v[i],
                slot_pos,
                q_pos,
                self.inv_freq,
                self.shape.scale,
                self.rope_scale,
                plan,
            )  # (1, Hq, P, D)
            h = h + arch.attention_output(layer, o)
            h = arch.mlp_block(layer, h)
        return h

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {"ring": self.ring.state_dict(), "seen": self.seen, "carry": self.carry}

    def load_state_dict(self, state: dict) -> None:
        self.ring.load_state_dict(state["ring"])
        self.seen = int(state["seen"])
        carry = state["carry"]
        self.carry = None if carry is None else carry.to(self.device, torch.float32)
