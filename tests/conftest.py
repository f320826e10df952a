"""Shared fixtures: a real tokenizer (from the embedded model, cached), tiny seeded Llamas built
from a config (no downloads, seconds), and the real embedded model for the few `real` tests.

Plain helper functions live in helpers.py; test modules import them from there (``from helpers
import ...``), never from this file or from another test module."""

from __future__ import annotations

import pytest
import torch

from sepcli.models import load_model, load_tokenizer
from sepcli.separators import separator_mask
from sepcli.texts import essays_text

from helpers import build_tiny_llama

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(scope="session")
def tokenizer():
    """SmolLM2's real tokenizer (49152 ids, merged whitespace tokens, chat template)."""
    return load_tokenizer("smollm2")


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


@pytest.fixture(scope="session")
def essay_ids(tokenizer):
    """BOS + the first 300 tokens of the essays: real text for the tiny models."""
    text = tokenizer(essays_text(max_chars=1500), add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + text[:300]
