"""A small adapter over HF RoPE decoders, so the engines can run a model layer by layer.

The streaming engine and GemFilter need what HF's attention hides: queries and keys *before*
RoPE, RoPE at positions of our choosing, and the ability to stop after layer r. Every supported
family (Llama, Mistral, Qwen2, Qwen3, Phi-3) has the same block shape:

    h = h + o_proj(attention(rope(q), rope(k), v))       q, k, v from input_layernorm(h)
    h = h + mlp(post_attention_layernorm(h))

and differs only in how q, k, v are projected (separate or fused ``qkv_proj``; Qwen3's per-head
``q_norm``/``k_norm`` before RoPE). Those differences live in :func:`project_qkv` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sepcli.errors import UnsupportedModelError
from sepcli.kernels.rope import rope_cos_sin


@dataclass(frozen=True)
class Shape:
    """Attention shape of a model: heads, kv heads, head dim, softmax scale, layer count."""

    layers: int
    q_heads: int
    kv_heads: int
    head_dim: int
    scale: float
    context_length: int

    @property
    def group(self) -> int:
        """Query heads per KV head (GQA ratio)."""
        return self.q_heads // self.kv_heads


def shape_of(model) -> Shape:
    cfg = model.config
    q_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // q_heads
    attn = decoder_layers(model)[0].self_attn
    return Shape(
        layers=cfg.num_hidden_layers,
        q_heads=q_heads,
        kv_heads=getattr(cfg, "num_key_value_heads", None) or q_heads,
        head_dim=head_dim,
        scale=float(getattr(attn, "scaling", head_dim**-0.5)),
        context_length=int(getattr(cfg, "max_position_embeddings", 0) or 0),
    )


@dataclass(frozen=True)
class Rope:
    """A model's rotary embedding: inverse frequencies [R/2] (fp32) and HF's ``attention_scaling``
    (a multiplier on cos/sin; 1.0 for plain RoPE)."""

    inv_freq: torch.Tensor
    scale: float

    def tables(
        self, positions: torch.Tensor, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [..., R] for integer ``positions`` [...]
        (:func:`sepcli.kernels.rope.rope_cos_sin`, rounded to ``dtype``); rotate with
        :func:`sepcli.kernels.rope.rotate`. ``dtype``: the activations' to rotate exactly as
        the model's own forward does (transformers casts its tables to the hidden dtype)."""
        cos, sin = rope_cos_sin(positions, self.inv_freq, self.scale)
        return cos.to(dtype), sin.to(dtype)


def rope_of(model) -> Rope:
    """The model's RoPE parameters, on its device."""
    rotary = backbone(model).rotary_emb
    device = next(model.parameters()).device
    return Rope(
        rotary.inv_freq.to(device, torch.float32),
        float(getattr(rotary, "attention_scaling", 1.0)),
    )


def backbone(model):
    """The decoder stack (``model.model`` for *ForCausalLM)."""
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers"):
        raise UnsupportedModelError(f"{type(model).__name__} has no decoder stack at .model.layers")
    return inner


def decoder_layers(model) -> torch.nn.ModuleList:
    return backbone(model).layers


def embed(model, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] ids -> [B, T, hidden]."""
    return backbone(model).embed_tokens(input_ids)


def project_qkv(layer, normed: torch.Tensor, shape: Shape):
    """Pre-RoPE q [B, Hq, T, D], k [B, Hkv, T, D], v [B, Hkv, T, D] from normed hidden [B, T, hidden]."""
    attn = layer.self_attn
    b, t, _ = normed.shape
    d = shape.head_dim
    if hasattr(attn, "qkv_proj"):  # Phi-3: one fused projection
        qkv = attn.qkv_proj(normed)
        nq, nk = shape.q_heads * d, shape.kv_heads * d
        q, k, v = qkv[..., :nq], qkv[..., nq : nq + nk], qkv[..., nq + nk :]
    else:
        q, k, v = attn.q_proj(normed), attn.k_proj(normed), attn.v_proj(normed)
    q = q.view(b, t, shape.q_heads, d)  # (B, T, Hq, D)
    k = k.view(b, t, shape.kv_heads, d)
    v = v.view(b, t, shape.kv_heads, d)
    if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before RoPE
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)


def project_qk_window(layer, normed: torch.Tensor, shape: Shape, window: int):
    """Pre-RoPE q of the last ``window`` tokens [B, Hq, W, D] and k of all tokens [B, Hkv, T, D]
    from normed hidden [B, T, hidden] (GemFilter's layer r: no v, no q for the other tokens)."""
    attn = layer.self_attn
    if hasattr(attn, "qkv_proj"):  # fused projection: no cheap way to skip q/v of other tokens
        q, k, _ = project_qkv(layer, normed, shape)
        return q[:, :, -window:], k
    b, t, _ = normed.shape
    d = shape.head_dim
    q = attn.q_proj(normed[:, -window:]).view(b, window, shape.q_heads, d)  # (B, W, Hq, D)
    k = attn.k_proj(normed).view(b, t, shape.kv_heads, d)  # (B, T, Hkv, D)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    return q.transpose(1, 2), k.transpose(1, 2)


def attention_output(layer, attn: torch.Tensor) -> torch.Tensor:
    """[B, Hq, T, D] attention result -> [B, T, hidden] through o_proj."""
    b, h, t, d = attn.shape
    return layer.self_attn.o_proj(attn.transpose(1, 2).reshape(b, t, h * d))


def mlp_block(layer, hidden: torch.Tensor) -> torch.Tensor:
    """Second half of a decoder block: residual + MLP(post_attention_layernorm(h))."""
    return hidden + layer.mlp(layer.post_attention_layernorm(hidden))


def lm_head(model, normed: torch.Tensor) -> torch.Tensor:
    """The LM head alone, on hidden states the final norm has seen: [..., hidden] -> [..., vocab]."""
    return model.lm_head(normed)


def logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Final norm + LM head: [B, T, hidden] -> [B, T, vocab]."""
    return lm_head(model, backbone(model).norm(hidden))
