"""Shared fixtures: a real tokenizer (from the embedded model, cached), tiny seeded Llamas built
from a config (no downloads, seconds), and the real embedded model for the few `real` tests."""

from __future__ import annotations

import pytest
import torch

from sepcli.models import load_model, load_tokenizer
from sepcli.separators import separator_mask

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's real tokenizer (49152 ids, merged whitespace tokens, chat template)."""
    return load_tokenizer("smollm2")


def build_tiny_llama(
    vocab_size: int,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 512,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    **config_overrides,
):
    """A random-weight Llama (seeded) of the given shape, eval mode, no grad."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"},
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
        **config_overrides,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype).eval()
    model.requires_grad_(False)
    return model


FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "phi3")


def build_tiny_family(
    family: str, vocab_size: int, *, seed: int = 0, attn_implementation: str = "sdpa", **extra
):
    """A random-weight model of one supported family, with what sets it apart switched on:
    Qwen2's q/k/v biases, Qwen3's per-head q/k norms, Phi-3's fused qkv and partial rotary."""
    import transformers

    common = dict(
        vocab_size=vocab_size,
        hidden_size=96,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        attn_implementation=attn_implementation,
        **extra,
    )
    classes = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
        "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", {"partial_rotary_factor": 0.5}),
    }
    config_cls, model_cls, own = classes[family]
    config = getattr(transformers, config_cls)(**common, **own)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    if family == "qwen2":  # random init zeroes biases; give them values so they matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=extra.get("initializer_range", 0.02))
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def seps(tokenizer):
    """The separator mask of the real tokenizer."""
    return separator_mask(tokenizer)


@pytest.fixture
def tiny_llama(tokenizer):
    """Factory: ``tiny_llama(layers=3, heads=6, kv_heads=2, seed=1)``."""

    def make(**kwargs):
        return build_tiny_llama(len(tokenizer), **kwargs)

    return make


@pytest.fixture(scope="session")
def real_model():
    """The embedded SmolLM2-135M-Instruct in fp32 on CPU (for the `real` tests)."""
    return load_model("smollm2", device="cpu", dtype="fp32")
