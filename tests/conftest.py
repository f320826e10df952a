"""Shared fixtures: a real tokenizer (from the embedded model, cached), tiny seeded Llamas built
from a config (no downloads, seconds), and the real embedded model for the few `real` tests."""

from __future__ import annotations

import pytest
import torch

from sepcli.models import load_model, load_tokenizer

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
