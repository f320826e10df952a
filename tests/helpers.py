"""Plain helpers that several test modules share: tiny seeded models built from a config, and
the streaming engine's plain-HF reference. Fixtures live in conftest.py; test modules import
these with ``from helpers import ...`` (pytest puts this folder on sys.path) and never import
conftest or another test module."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sepcli.stream.engine import StreamEngine

# Weights 15x the default init scale: attention is peaked and logits spread out, so an error
# of one position or one visible token changes the NLL well beyond the tests' tolerances (with
# the default 0.02, a random tiny model attends almost uniformly and hides such errors).
SHARP = 0.3


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
    )
    common.update(extra)  # e.g. a hidden size the 4-bit C kernel takes (a multiple of 64)
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


def run_engine(model, config, seps, ids):
    engine = StreamEngine(model, config, seps)
    stats = list(engine.run([ids[:37], ids[37:]]))  # blocks of odd sizes on purpose
    return engine, torch.cat([s.nll for s in stats]), stats


def hf_nll(model, ids):
    """Per-token NLL of ids[1:] from one plain HF forward (no cache, default positions)."""
    logits = model(torch.tensor([ids])).logits[0].float()
    return F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")


def tiny_model_folder(tmp_path_factory, tokenizer, name: str, seed: int) -> str:
    """A tiny Llama (2 layers, hidden 32) and the real tokenizer saved in a fresh folder: a
    model for CLI tests, loaded by ``--model FOLDER`` like any local model."""
    folder = tmp_path_factory.mktemp(name)
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=seed
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@torch.no_grad()
def round_to_q4_1(model, group: int = 32) -> None:
    """Round every decoder-layer linear weight to GGUF Q4_1's grid, in place, as llama.cpp's
    quantiser does: per group of ``group`` inputs, step = (max - min) / 15 and
    w = min + step * round((w - min) / step), with step and min stored in fp16 (the file's d
    and m). What a GGUF Q4_1 file dequantises to."""
    for layer in model.model.layers:
        for module in layer.modules():
            if isinstance(module, torch.nn.Linear):
                w = module.weight
                g = w.reshape(w.shape[0], -1, group)
                low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
                step = ((high - low) / 15).half().float()
                low = low.half().float()
                codes = ((g - low) / step).round().clamp(0, 15)
                w.copy_((low + step * codes).reshape(w.shape))


def fifo_with_writer(folder, text: str):
    """A named pipe in ``folder`` and a started daemon thread that writes ``text`` into it once
    a reader opens it (pytest.skip where there are no named pipes). -> (path, thread)."""
    import os
    import threading

    import pytest

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes on this platform")
    fifo = folder / "doc.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "w") as f:  # blocks until a reader opens the pipe
            f.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    return fifo, writer
