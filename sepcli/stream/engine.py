"""The streaming loop: tokens -> chunks -> layer-by-layer forward over the ring -> per-token NLL.

One token's path, top to bottom:

1. :meth:`StreamEngine.run` groups incoming token ids into chunks of ``config.chunk``.
2. :meth:`StreamEngine.feed` asks the cache method (:mod:`sepcli.stream.methods`) to plan the
   chunk: the method evicts what must go, claims the chunk's ring slots and builds the RoPE
   tables and masks every layer shares. Planning only touches the ring's index tensors.
3. :meth:`StreamEngine._forward` runs the decoder once over the whole chunk: projections, MLP and
   LM head see all the chunk's tokens at once; each layer's attention goes through the plan,
   which writes the layer's pre-RoPE keys/values into the ring and attends exactly as if the
   tokens had been fed one at a time.
4. :meth:`StreamEngine._score`: the logits at token t score token t+1 in fp32; the last row is
   kept (``last_logits``), so the next chunk's first token is scored too and a generator can
   sample the next token from it.

The engine never prints: :meth:`feed` returns one :class:`ChunkStats` per chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepcli import arch
from sepcli.stream.checkpoint import TokenDigest
from sepcli.stream.config import StreamConfig
from sepcli.stream.methods import make_method
from sepcli.stream.methods.base import ChunkPlan
from sepcli.stream.one_token import OneToken
from sepcli.stream.ring import RingKV


@dataclass(frozen=True)
class ChunkStats:
    """What one forward pass (one chunk) did.

    tokens : tokens fed in this chunk.
    scored : tokens whose NLL was computed (the stream's very first token has no prediction).
    nll_sum : sum of their NLL (nats, fp32 log-softmax).
    nll : [scored] per-token NLL, fp32, on CPU.
    cache_used : ring slots in use after the chunk (<= capacity).
    seen : tokens fed since the start of the stream.
    cache_peak : most ring slots in use while the chunk was processed (<= capacity).
    steps : attention steps the chunk was cut into (compressions inside it + 1).
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
    steps: int = 1
    cache_mean: float = 0.0


class StreamEngine:
    """Streams token ids through a RoPE decoder with a fixed-size ring KV cache.

    Parameters
    ----------
    model : a HF *ForCausalLM of a family :mod:`sepcli.arch` supports, eval mode.
    config : the cache budget and chunk size.
    separators : [vocab] bool lookup, True for separator ids (:func:`sepcli.separators.separator_mask`).
    score : compute per-token NLL (False runs the LM head on each chunk's last token only:
        the cache is filled and ``last_logits`` kept, nothing is scored).
    """

    def __init__(self, model, config: StreamConfig, separators: torch.Tensor, score: bool = True):
        self.model = model
        self.config = config
        self.score = score
        self.shape = arch.shape_of(model)
        self.layers = arch.decoder_layers(model)
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.rope = arch.rope_of(model)
        self.method = make_method(config)
        self.capacity = self.method.ring_slots(self.shape.context_length)
        self.separators = separators.to(self.device)
        self.ring = RingKV.for_model(self.shape, self.capacity, self.device, self.dtype)
        self.one_token = OneToken.for_model(model, self.shape)  # None: every chunk goes one way
        self.seen = 0  # tokens fed so far = text index of the next token
        self.fed = TokenDigest()  # digest of those tokens: a resume checks its input against it
        self.last_logits: torch.Tensor | None = None  # [vocab] fp32: the prediction after `seen`

    # ------------------------------------------------------------------ the loop

    def run(self, blocks: Iterable[Sequence[int]]) -> Iterator[ChunkStats]:
        """Feed blocks of token ids of any size, ``config.chunk`` tokens per chunk."""
        chunk, buf = self.config.chunk, []
        for block in blocks:
            buf.extend(block)
            start = 0
            while len(buf) - start >= chunk:
                yield self.feed(buf[start : start + chunk])
                start += chunk
            del buf[:start]
        if buf:
            yield self.feed(buf)

    @torch.inference_mode()
    def feed(self, ids: Sequence[int]) -> ChunkStats:
        """Process one chunk of token ids (1 <= len <= any size) in one forward pass."""
        ids = list(ids)
        if not ids:
            raise ValueError("feed needs at least one token id")
        self.fed.update(ids)
        ids_t = torch.as_tensor(ids, dtype=torch.int64, device=self.device)  # (P,)
        plan = self.method.plan_chunk(
            self.ring,
            ids_t,
            self.seen,
            self.separators[ids_t],
            self.rope,
            self.shape.scale,
            self.dtype,
        )
        h = self._forward(ids_t, plan)  # (1, P, hidden)
        nll = self._score(ids_t, h)
        self.seen += len(ids)
        return ChunkStats(
            tokens=len(ids),
            scored=int(nll.numel()),
            nll_sum=float(nll.sum()),
            nll=nll.cpu(),
            cache_used=self.ring.used,
            seen=self.seen,
            cache_peak=plan.peak,
            steps=plan.steps,
            cache_mean=plan.mean_seen,
        )

    def _forward(self, ids: torch.Tensor, plan: ChunkPlan) -> torch.Tensor:
        """One pass of the decoder layers over a chunk ids [P]; -> last hidden states [1, P, hidden]."""
        if len(ids) == 1 and self.one_token is not None:
            return self.one_token.forward(ids, plan, self.ring)
        h = arch.embed(self.model, ids[None])  # (1, P, hidden)
        for i, layer in enumerate(self.layers):
            q, k, v = arch.project_qkv(layer, layer.input_layernorm(h), self.shape)  # (1, H, P, D)
            h = h + arch.attention_output(layer, plan.attend(self.ring, i, q, k, v))
            h = arch.mlp_block(layer, h)
        return h

    def _score(self, ids: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """NLL [scored] of the chunk ids [P] from its last hidden states h [1, P, hidden]: the
        logits at t score t+1, the chunk's first token uses the previous ``last_logits``.
        Keeps the chunk's last row in ``last_logits``. Without ``score``: only that row."""
        if not self.score:
            self.last_logits = arch.logits(self.model, h[:, -1:])[0, -1].float()
            return torch.zeros(0)
        logits = arch.logits(self.model, h)[0]  # (P, V)
        nll = F.cross_entropy(logits[:-1].float(), ids[1:], reduction="none")
        if self.last_logits is not None:
            first = F.cross_entropy(self.last_logits[None], ids[:1], reduction="none")
            nll = torch.cat((first, nll))
        # a copy: a view of the row would keep the chunk's whole [P, vocab] logits alive
        self.last_logits = logits[-1].float().clone()
        return nll

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "ring": self.ring.state_dict(),
            "seen": self.seen,
            "last_logits": self.last_logits,
            "input": self.fed.summary(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.ring.load_state_dict(state["ring"])
        if self.one_token is not None:
            self.one_token.reset()
        self.seen = int(state["seen"])
        logits = state.get("last_logits", state.get("carry"))  # older checkpoints call it "carry"
        self.last_logits = None if logits is None else logits.to(self.device, torch.float32)
