"""Every supported model family through both engines, against HF's own implementation of that
family: the streaming engine's per-token NLL with nothing evicted, and GemFilter's filter scores
against eager attention. What differs between families (Qwen2's biases, Qwen3's q/k norms,
Phi-3's fused qkv and partial rotary) lives in sepcli/arch.py; these tests are what check it."""

from __future__ import annotations

import pytest
import torch

from sepcli.gemfilter.filter import filter_scores
from sepcli.stream.config import StreamConfig

from helpers import FAMILIES, SHARP, build_tiny_family, hf_nll, run_engine


@pytest.fixture(scope="module")
def ids(essay_ids):
    return essay_ids[:161]


@torch.inference_mode()
@pytest.mark.parametrize("family", FAMILIES)
def test_stream_engine_equals_hf_on_every_family(family, tokenizer, seps, ids):
    model = build_tiny_family(family, len(tokenizer), seed=1, initializer_range=SHARP)
    assert model.config.model_type == family
    ref = hf_nll(model, ids)
    for chunk in (1, 48):
        cfg = StreamConfig(init=4, sep=8, window=64, capacity=512, chunk=chunk)
        _, nll, _ = run_engine(model, cfg, seps, ids)
        torch.testing.assert_close(nll, ref, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
@pytest.mark.parametrize("family", FAMILIES)
def test_filter_scores_equal_eager_attention_on_every_family(family, tokenizer):
    model = build_tiny_family(
        family, len(tokenizer), seed=2, attn_implementation="eager", initializer_range=SHARP
    )
    x = torch.randint(0, 5000, (71,), generator=torch.Generator().manual_seed(1))
    ref = model(x[None], output_attentions=True).attentions
    for r in range(model.config.num_hidden_layers):
        torch.testing.assert_close(
            filter_scores(model, x, r), ref[r][0, :, -1, :].sum(0), rtol=1e-4, atol=1e-6
        )
