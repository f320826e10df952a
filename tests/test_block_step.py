# ruff: noqa: F811  (the shared fixtures of tests/cpu_builds.py, imported)
"""The C decode step over projections in GGUF blocks, every format mixed in one model, against
the torch step (the same block products, attention through the plan) and the fp32 model of the
same weights (each block dequantised), on this machine's build and the AVX2 one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sepcli.kernels.quant as kq
from sepcli.kernels.quant import kernels as block_kernels
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from tests.cpu_builds import builds, c_kernels_anywhere, kernels_for, native  # noqa: F401
from tests.helpers import build_tiny_family

SEED = 29
# per layer: q, k, v, o, gate, up, down (every format with C kernels, K-quants and 32-blocks)
TYPES = [
    ("Q4_K", "Q6_K", "Q8_0", "Q4_1", "Q5_K", "Q4_0", "Q6_K"),
    ("Q5_0", "Q5_1", "Q4_K", "Q8_0", "Q4_K", "Q6_K", "Q5_K"),
]
SHAPE = dict(
    hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
    num_hidden_layers=2,
)  # fmt: skip
CFG = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=16)
NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class BlockProj(nn.Module):
    """A projection held in GGUF blocks, as the model side's BlockLinear: ``.weight_blocks``
    and ``.bias``, forward through kernels.quant.matmul."""

    def __init__(self, blocks: kq.BlockTensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight_blocks = blocks
        self.register_buffer("bias", bias)

    def forward(self, x):
        return kq.matmul(x, self.weight_blocks, self.bias)


def scaled_blocks(qtype: str, rows: int, cols: int, seed: int, std: float = 0.05):
    """Random blocks whose dequantised weights have about this std."""
    probe = kq.random_blocks(qtype, rows, cols, torch.Generator().manual_seed(seed), scale=1.0)
    scale = std / kq.dequantize(probe).std().item()
    return kq.random_blocks(qtype, rows, cols, torch.Generator().manual_seed(seed), scale=scale)


def block_models(tokenizer, family: str):
    """(blocks model, fp32 model): the same weights, one in blocks, one dequantised."""
    fp32 = build_tiny_family(family, len(tokenizer), seed=SEED, **SHAPE)
    model = build_tiny_family(family, len(tokenizer), seed=SEED, **SHAPE)
    for i, (layer, ref) in enumerate(zip(model.model.layers, fp32.model.layers, strict=True)):
        for j, name in enumerate(NAMES):
            owner = "self_attn" if j < 4 else "mlp"
            lin, ref_lin = getattr(getattr(layer, owner), name), getattr(getattr(ref, owner), name)
            blocks = scaled_blocks(TYPES[i][j], lin.out_features, lin.in_features, 100 * i + j)
            with torch.no_grad():
                ref_lin.weight.copy_(kq.dequantize(blocks))
            bias = None if lin.bias is None else lin.bias.detach().clone()
            setattr(getattr(layer, owner), name, BlockProj(blocks, bias))
    return model, fp32


@pytest.mark.parametrize(
    "family,build", [("llama", "native"), ("qwen2", "native"), ("llama", "avx2")]
)
def test_block_step_tracks_the_torch_step_and_fp32(
    request, monkeypatch, tokenizer, seps, essay_ids, family, build
):
    print(f"seed {SEED}")
    kern = kernels_for(request, build)
    monkeypatch.setattr(block_kernels, "cpu_kernels", lambda: kern)
    model, fp32 = block_models(tokenizer, family)
    c_step, torch_step, ref = (StreamEngine(m, CFG, seps) for m in (model, model, fp32))
    assert c_step.one_token is not None and c_step.one_token.native is not None
    torch_step.one_token.native = None
    engines = {"c": c_step, "torch": torch_step, "fp32": ref}
    ids = essay_ids
    for engine in engines.values():
        list(engine.run([ids[:40]]))  # chunks: the blocked GEMM
    n = 100  # past a compression of the 64-slot ring
    err = {"c": 0.0, "torch": 0.0}
    nll = {k: [] for k in engines}
    for t in ids[40 : 40 + n]:
        for name, engine in engines.items():
            nll[name].append(engine.feed([t]).nll_sum)
        for name in err:
            err[name] += (engines[name].last_logits - ref.last_logits).abs().mean().item() / n
    mean = {k: sum(v) / len(v) for k, v in nll.items()}
    print(family, build, "mean |logit - fp32|", err, "mean NLL", mean)
    # the bound: the C step errs against fp32 as the torch step does (the same products; only
    # float summation order differs), and both score within 1% of fp32
    assert err["c"] < 1.1 * err["torch"] + 1e-3
    assert abs(mean["c"] / mean["torch"] - 1) < 1e-3
    assert abs(mean["c"] / mean["fp32"] - 1) < 1e-2
    assert torch.equal(c_step.ring.text_idx, torch_step.ring.text_idx)
    v_rel = ((c_step.ring.v - torch_step.ring.v).norm() / torch_step.ring.v.norm()).item()
    print("ring values, relative difference", v_rel)
    assert v_rel < 1e-3


def test_float_projection_takes_the_torch_step(native, monkeypatch, tokenizer, seps, essay_ids):
    """An F16 projection has no C kernel: the step runs in torch, with the same numbers."""
    monkeypatch.setattr(block_kernels, "cpu_kernels", lambda: native)
    model, _ = block_models(tokenizer, "llama")
    lin = model.model.layers[1].mlp.up_proj
    w = kq.dequantize(lin.weight_blocks).half()
    model.model.layers[1].mlp.up_proj = BlockProj(kq.BlockTensor("F16", w, *w.shape), None)
    engine = StreamEngine(model, CFG, seps)
    assert engine.one_token is not None and engine.one_token.native is None
    list(engine.run([essay_ids[:20]]))
    assert all(torch.isfinite(torch.tensor(engine.feed([t]).nll_sum)) for t in essay_ids[20:30])
