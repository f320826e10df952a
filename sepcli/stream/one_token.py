"""One token through a 4-bit decoder: the decode step, in fewer ops than the general path.

Feeding one token (a decode step) makes each layer's work a few matrix-vector products and some
vector arithmetic. In eager PyTorch the general path (:meth:`StreamEngine._forward`, through the
HF modules and :class:`~sepcli.quant.Int8Linear`) spends about as long in ~100 small ops and
module calls per layer as in the 4-bit matmuls themselves. :class:`OneToken` runs the same block
(the shape in :mod:`sepcli.arch`) straight from each layer's tensors:

    x = rms_norm(h) -> q, k, v = 4-bit matmuls -> plan.attend (the ring, as for any chunk)
    h = h + o(attn);  x = rms_norm(h);  h = h + down(silu(gate(x)) * up(x))

with the activations going into each 4-bit matmul in bf16 and its result taken back to fp32, as
``Int8Linear`` does for one token, so both paths compute the same numbers (tested to the last
bit). Attention, eviction and RoPE stay with the cache method's plan, so the ring is handled by
one piece of code.

It serves a model whose every layer's projections hold exact 4-bit weights
(:func:`sepcli.quant.exact_int4`: a GGUF Q4_1 model under ``--dtype int8``), with RMSNorm and a
SiLU-gated MLP (Llama, Mistral, Qwen2); :meth:`OneToken.for_model` returns None for anything
else, and the general path runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sepcli import arch
from sepcli.quant import Int8Linear, int4_linear, int4_matmul

_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


class _Int4:
    """One projection's 4-bit weight: bf16 [1, in] -> [1, out] (bf16, or fp32 plus bias)."""

    __slots__ = ("bias", "packed", "scale_zero")

    def __init__(self, linear: Int8Linear):
        self.packed, self.scale_zero, self.bias = (
            linear.weight_int4,
            linear.int4_scale_zero,
            linear.bias,
        )

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        return int4_matmul(x, self.packed, self.scale_zero)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return int4_linear(x, self.packed, self.scale_zero, self.bias)


class _Layer:
    __slots__ = ("down", "eps", "gate", "k", "ln1", "ln2", "o", "q", "up", "v")

    def __init__(self, layer):
        attn, mlp = layer.self_attn, layer.mlp
        self.q, self.k, self.v, self.o = (_Int4(getattr(attn, n)) for n in _PROJECTIONS)
        self.gate, self.up, self.down = (_Int4(getattr(mlp, n)) for n in _MLP)
        self.ln1 = layer.input_layernorm.weight
        self.ln2 = layer.post_attention_layernorm.weight
        self.eps = float(layer.input_layernorm.variance_epsilon)


def _eligible(layer) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    if attn is None or mlp is None or hasattr(attn, "q_norm"):  # Qwen3 normalises q, k per head
        return False
    for owner, names in ((attn, _PROJECTIONS), (mlp, _MLP)):
        for name in names:
            m = getattr(owner, name, None)
            if not isinstance(m, Int8Linear) or m.weight_int4 is None:
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
    """The decode step of a 4-bit model: one token's hidden state through every layer.

    model : a *ForCausalLM after :func:`sepcli.quant.quantize_linears`.
    shape : its :class:`~sepcli.arch.Shape`.
    """

    def __init__(self, model, shape: arch.Shape):
        self.model = model
        self.shape = shape
        self.layers = [_Layer(layer) for layer in arch.decoder_layers(model)]
        self.hidden = int(model.config.hidden_size)

    @classmethod
    def for_model(cls, model, shape: arch.Shape) -> OneToken | None:
        """The fast path when every layer of ``model`` can take it; else None."""
        layers = arch.decoder_layers(model)
        silu = getattr(model.config, "hidden_act", None) in ("silu", "swish")
        if not silu or len(layers) == 0 or not all(_eligible(layer) for layer in layers):
            return None
        return cls(model, shape)

    def forward(self, ids: torch.Tensor, plan, ring) -> torch.Tensor:
        """ids [1] -> last hidden states [1, 1, hidden], writing its k, v into ``ring`` through
        ``plan`` (the chunk plan of this one token)."""
        s, bf16, size = self.shape, torch.bfloat16, (self.hidden,)
        h = arch.embed(self.model, ids[None])[0]  # (1, hidden)
        for i, w in enumerate(self.layers):
            x = F.rms_norm(h, size, w.ln1, w.eps).to(bf16)
            q = w.q(x).view(1, s.q_heads, 1, s.head_dim)
            k = w.k(x).view(1, s.kv_heads, 1, s.head_dim)
            v = w.v(x).view(1, s.kv_heads, 1, s.head_dim)
            a = plan.attend(ring, i, q, k, v)  # (1, Hq, 1, D)
            h = h + w.o(a.reshape(1, -1).to(bf16))
            x = F.rms_norm(h, size, w.ln2, w.eps).to(bf16)
            g, u = w.gate.raw(x), w.up.raw(x)
            h = h + w.down((F.silu(g.float()) * u.float()).to(bf16))
        return h[None]  # (1, 1, hidden)
