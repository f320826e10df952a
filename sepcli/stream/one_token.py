"""One token through a quantized decoder: the decode step, in fewer ops than the general path.

Feeding one token (a decode step) makes each layer's work a few matrix-vector products and some
vector arithmetic. In eager PyTorch the general path (:meth:`StreamEngine._forward`, through the
HF modules and :class:`~sepcli.quant.Int8Linear`) spends longer in ~100 small ops and module
calls per layer than in the 4-bit products themselves. :class:`OneToken` runs the same block
(the shape in :mod:`sepcli.arch`):

    x = rms_norm(h) -> q, k, v = quantized products -> attention over the ring
    h = h + o(attn);  x = rms_norm(h);  h = h + down(silu(gate(x)) * up(x))

two ways:

* **C** (:mod:`sepcli.kernels.cpu`, where its kernels are used): every layer in one call, for a token
  whose plan attends at cache positions (sepllm, full: ``plan.single_step()``). The call writes
  the token's k, v into the ring itself and keeps every slot's key rotated to its cache
  position in :attr:`OneToken.k_rot`, rotating only the new key while no slot moves.
* **torch**: the block from each layer's tensors, with the same products as the layers' own
  (``Int8Linear``'s 4-bit one, :func:`sepcli.kernels.quant.matmul`) and the method's own
  ``plan.attend``, so the ring is handled by one piece of code; it gives the general path's
  numbers.

It serves a model whose every layer's projections are either exact 4-bit weights
(:func:`sepcli.quant.exact_int4`: a GGUF Q4_1 model under ``--dtype int8``) or GGUF blocks (any
module with a ``.weight_blocks`` :class:`sepcli.kernels.quant.BlockTensor` and a ``.bias``; mixed types
are fine), with RMSNorm and a SiLU-gated MLP (Llama, Mistral, Qwen2); :meth:`OneToken.for_model`
returns None for anything else, and the general path runs. The C step takes the block formats
with C kernels (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K); a model with a float-typed
projection (F16, BF16, F32) takes the torch step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sepcli import arch
from sepcli.kernels import quant as block_quant
from sepcli.kernels.cpu import DecodeStep
from sepcli.kernels.quant import kernels as block_kernels
from sepcli.kernels.rope import rope_cos_sin
from sepcli.quant import Int8Linear, int4_linear

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")
_NATIVE = ("q", "k", "v", "o", "gate", "up", "down")


class _Layer:
    __slots__ = ("down", "eps", "gate", "k", "ln1", "ln2", "o", "q", "up", "v")

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (getattr(attn, n) for n in _PROJECTIONS)
        self.gate, self.up, self.down = (getattr(mlp, n) for n in _MLP)
        self.ln1 = layer.input_layernorm.weight
        self.ln2 = layer.post_attention_layernorm.weight
        self.eps = float(layer.input_layernorm.variance_epsilon)


def _blocks(m) -> block_quant.BlockTensor | None:
    """A projection's weight in GGUF blocks (duck-typed: ``.weight_blocks``), or None."""
    return getattr(m, "weight_blocks", None)


def _projection_ok(m) -> bool:
    return _blocks(m) is not None or (isinstance(m, Int8Linear) and m.has_int4)


def _linear(x: torch.Tensor, m) -> torch.Tensor:
    """x [1, in] through projection m, as its own forward computes it."""
    w = _blocks(m)
    return int4_linear(x, m) if w is None else block_quant.matmul(x, w, m.bias)


def _c_weight(m):
    """What the C step reads for projection m (see DecodeStep.build), or None."""
    w = _blocks(m)
    if w is None:
        return m.q4
    return (w, m.bias) if w.format.c_type >= 0 else None


def _rows(w) -> int:
    return w[0].rows if isinstance(w, tuple) else w.out_features


def _eligible(layer) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or hasattr(attn, "q_norm"):  # Qwen3 normalises q, k per head
        return False
    for owner, names in ((attn, _PROJECTIONS), (mlp, _MLP)):
        for name in names:
            if not _projection_ok(getattr(owner, name, None)):
                return False
    if mlp.gate_proj.bias is not None or mlp.up_proj.bias is not None:
        return False
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if any(
        not hasattr(n, "variance_epsilon") or getattr(n, "bias", None) is not None for n in norms
    ):
        return False
    return layer.post_attention_layernorm.variance_epsilon == layer.input_layernorm.variance_epsilon


class OneToken:
    """The decode step of a quantized model: one token's hidden state through every layer.

    model : a *ForCausalLM after :func:`sepcli.quant.quantize_linears`, or one whose
        projections hold GGUF blocks (``.weight_blocks``).
    shape : its :class:`~sepcli.arch.Shape`.

    Where every projection holds a layout the C kernels read, a token that attends as the ring-step
    plans do (sepllm, full) runs the whole stack in one call of ``sep_decode_layers``
    (:mod:`sepcli.kernels.cpu`), which keeps each slot's key rotated to its cache position in
    :attr:`k_rot` and rotates only the new key while no position moves. Other plans (the
    sliding methods' frames) take the torch step below with the same products.
    """

    def __init__(self, model, shape: arch.Shape):
        self.model = model
        self.shape = shape
        self.layers = [_Layer(layer) for layer in arch.decoder_layers(model)]
        self.hidden = int(model.config.hidden_size)
        self.kernels = self._kernels()
        self.native = self._native_step(model, shape)
        self.k_rot: torch.Tensor | None = None  # rotated keys, fp32, per layer and kv head
        self._rot_pos: torch.Tensor | None = None  # slot positions k_rot was rotated at
        self._rot_text: torch.Tensor | None = None  # and the tokens the slots held
        self._tables: tuple[int, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def for_model(cls, model, shape: arch.Shape) -> OneToken | None:
        """The fast path when every layer of ``model`` can take it; else None."""
        layers = arch.decoder_layers(model)
        silu = getattr(model.config, "hidden_act", None) in ("silu", "swish")
        if not silu or len(layers) == 0 or not all(_eligible(layer) for layer in layers):
            return None
        return cls(model, shape)

    def _kernels(self):
        """The C kernels the layers were packed for (Int8Linear's), else those of
        :mod:`sepcli.kernels.quant` for block weights; None where there are none."""
        for w in self.layers:
            for n in _NATIVE:
                m = getattr(w, n)
                if _blocks(m) is None:
                    return m.kernels
        return block_kernels.cpu_kernels()

    def _native_step(self, model, shape: arch.Shape) -> DecodeStep | None:
        if self.kernels is None or shape.head_dim > 512:  # decode.c's RoPE buffer
            return None
        layers = []
        for w in self.layers:
            weights = {n: _c_weight(getattr(w, n)) for n in _NATIVE}
            if any(v is None for v in weights.values()):
                return None
            layers.append({"ln1": w.ln1, "ln2": w.ln2, **weights})
        rope = arch.rope_of(model)
        return DecodeStep.build(
            layers,
            hidden=self.hidden,
            q_heads=shape.q_heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            inter=_rows(layers[0]["gate"]),
            rot=2 * rope.inv_freq.numel(),
            eps=self.layers[0].eps,
            scale=shape.scale,
        )

    def reset(self) -> None:
        """Forget the rotated keys (the ring was replaced, e.g. by a checkpoint)."""
        self._rot_pos = self._rot_text = None

    def forward(self, ids: torch.Tensor, plan, ring) -> torch.Tensor:
        """ids [1] -> last hidden states [1, 1, hidden], writing its k, v into ``ring`` through
        ``plan`` (the chunk plan of this one token)."""
        step = plan.single_step()
        if self.native is not None and step is not None and ring.k.dtype == torch.float32:
            return self._native(ids, step, ring)
        s, size = self.shape, (self.hidden,)
        h = arch.embed(self.model, ids[None])[0]  # (1, hidden)
        for i, w in enumerate(self.layers):
            x = F.rms_norm(h, size, w.ln1, w.eps)
            q = _linear(x, w.q).view(1, s.q_heads, 1, s.head_dim)
            k = _linear(x, w.k).view(1, s.kv_heads, 1, s.head_dim)
            v = _linear(x, w.v).view(1, s.kv_heads, 1, s.head_dim)
            a = plan.attend(ring, i, q, k, v)  # (1, Hq, 1, D)
            h = h + _linear(a.reshape(1, -1), w.o)
            x = F.rms_norm(h, size, w.ln2, w.eps)
            g, u = _linear(x, w.gate), _linear(x, w.up)
            h = h + _linear(F.silu(g) * u, w.down)
        return h[None]  # (1, 1, hidden)

    def _native(self, ids: torch.Tensor, step, ring) -> torch.Tensor:
        """The whole stack in C: the ring's slots at ``step.slot_pos``, the token in
        ``step.slots[0]`` at ``step.q_pos[0]``."""
        slot, q_pos = int(step.slots[0]), int(step.q_pos[0])
        layers, _, kv, slots, d = ring.k.shape
        blocks = (slots + 15) // 16
        if self.k_rot is None or self.k_rot.shape != (layers, kv, blocks, d, 16):
            self.k_rot = torch.zeros(layers, kv, blocks, d, 16)  # decode.c's blocks of 16 slots
            self.reset()
        # Keys rotated earlier still hold where every slot keeps its position and its token.
        pos, text = step.slot_pos, ring.text_idx
        if self._rot_pos is None:
            rerotate = True
        else:
            same = (pos == self._rot_pos) & (text == self._rot_text)
            same[slot] = True  # the token's own slot is written now
            rerotate = not bool(same.all())
        self._rot_pos, self._rot_text = pos.clone(), text.clone()
        cos, sin = self._rope_tables(ring.capacity)
        h = arch.embed(self.model, ids[None])[0, 0].float().contiguous()  # (hidden,)
        self.kernels.decode_layers(
            self.native, h, ring.k, ring.v, self.k_rot, pos.contiguous(), slot, q_pos,
            rerotate, cos, sin, torch.get_num_threads(),
        )  # fmt: skip
        return h.view(1, 1, -1)

    def _rope_tables(self, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [capacity, R] for every cache position."""
        if self._tables is None or self._tables[0] != capacity:
            rope = arch.rope_of(self.model)
            positions = torch.arange(capacity)
            self._tables = (capacity, *rope_cos_sin(positions, rope.inv_freq, rope.scale))
        return self._tables[1], self._tables[2]
