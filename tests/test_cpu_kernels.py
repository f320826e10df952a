"""The C one-token kernels (kernels/cpu/decode.c) against their torch references, and the
decode step built on them against the torch step, fp32 and itself."""

# ruff: noqa: F811  (the shared fixtures of tests/cpu_builds.py, imported)
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sepcli.quant
from sepcli.kernels import cpu as kernels_cpu
from sepcli.kernels.cpu import pack_q4
from sepcli.kernels.cpu.reference import dequantize_q4, q4_matvec_reference
from sepcli.quant import Int8Linear, cpu_kernels, cpu_kernels_missing, quantize_linears
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from tests.cpu_builds import X86, builds, c_kernels_anywhere, kernels_for, native  # noqa: F401
from tests.helpers import SHARP, build_tiny_family, round_to_q4_1

SEED = 5


def random_q4(out: int, n_in: int, gen: torch.Generator, bias: bool = False):
    """A 4-bit weight as GGUF Q4_1 stores one: fp16 step and min per group of 32."""
    step = (torch.rand(out, n_in // 32, generator=gen) * 0.02 + 1e-3).half().float()
    low = (torch.randn(out, n_in // 32, generator=gen) * 0.05).half().float()
    codes = torch.randint(0, 16, (out, n_in), generator=gen)
    b = torch.randn(out, generator=gen) if bias else None
    return pack_q4(codes, step, low, b)


@pytest.fixture(scope="module")
def ids(essay_ids):
    return essay_ids


@pytest.mark.parametrize("build", ["native", "avx2", "plain"])
@pytest.mark.parametrize("out,n_in,bias", [(64, 128, False), (192, 256, True), (48, 640, False)])
def test_q4_matvec_matches_its_reference(request, build, out, n_in, bias):
    kern = kernels_for(request, build)
    gen = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}")
    w = random_q4(out, n_in, gen, bias)
    x = torch.randn(n_in, generator=gen)
    x[:32] = 0  # a group of zeros quantises to zeros
    y = kern.q4_matvec(x, w, threads=1)
    ref = q4_matvec_reference(x, w)  # the same arithmetic in fp64
    assert torch.allclose(y, ref, rtol=1e-5, atol=1e-5), (y - ref).abs().max()
    # against the weight in fp32: only the activation's rounding to int8 per group of 32
    exact = dequantize_q4(w) @ x + (0 if w.bias is None else w.bias)
    rel = ((y - exact).norm() / exact.norm()).item()
    print(build, "relative error vs fp32", rel)
    assert rel < 2e-2
    assert torch.equal(kern.q4_matvec(x, w, threads=2), y)  # threads split rows only


@pytest.mark.parametrize("build", ["native", "avx2", "plain"])
def test_int8_head_equals_the_torch_path(request, build):
    """One token through an int8 layer in C gives the torch path's numbers exactly (the int32
    sums are exact and the float steps are the same, in the same order)."""
    kern = kernels_for(request, build)
    gen = torch.Generator().manual_seed(SEED)
    lin = nn.Linear(320, 1000, bias=True)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(1000, 320, generator=gen) * 0.05)
    layer = Int8Linear(lin, torch.rand(320, generator=gen) * 4)
    x = torch.randn(320, generator=gen) * 3
    torch_path = layer(torch.stack((x, x)))[0]  # two tokens: the int8 GEMM in torch
    y = kern.int8_matvec(
        x, layer.weight_int8, layer.weight_int8.sum(1, dtype=torch.int32), layer.weight_scale,
        layer.inv_smooth, layer.bias, threads=1,
    )  # fmt: skip
    assert torch.equal(y, torch_path)
    if build == "native":
        assert torch.equal(layer(x), torch_path)  # Int8Linear's own one-token branch


def q4_model(tokenizer, family: str, **shape):
    model = build_tiny_family(family, len(tokenizer), seed=SEED, initializer_range=SHARP, **shape)
    round_to_q4_1(model)
    return model


# hidden and MLP sizes the C layout takes (multiples of 64); 3 and 4 q heads per kv head
SHAPES = {
    "llama": dict(hidden_size=192, intermediate_size=256, num_attention_heads=6),
    "qwen2": dict(hidden_size=128, intermediate_size=192, num_attention_heads=8),
    "mistral": dict(hidden_size=128, intermediate_size=256, num_attention_heads=4),
}
CFG = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=16)


@pytest.mark.parametrize(
    "family,build", [(f, "native") for f in sorted(SHAPES)] + [("llama", "avx2"), ("qwen2", "avx2")]
)
def test_native_step_tracks_the_torch_step_and_fp32(
    request, monkeypatch, tokenizer, seps, ids, family, build
):
    """200 tokens one at a time past 3 compressions of a 64-slot ring: the C step and the torch
    step (same 4-bit products, attention through the plan) err alike against the fp32 model
    of the same Q4_1 weights, and score alike."""
    print(f"seed {SEED}")
    kern = kernels_for(request, build)
    fp32 = q4_model(tokenizer, family, **SHAPES[family])
    model = q4_model(tokenizer, family, **SHAPES[family])
    monkeypatch.setattr(
        sepcli.quant.c_kernels, "cpu_kernels", lambda: kern
    )  # layers packed for `build`
    quantize_linears(model, tokenizer)
    assert model.model.layers[0].mlp.up_proj.kernels is kern
    c_step, torch_step, ref = (StreamEngine(m, CFG, seps) for m in (model, model, fp32))
    assert c_step.one_token.native is not None
    torch_step.one_token.native = None
    engines = {"c": c_step, "torch": torch_step, "fp32": ref}
    for engine in engines.values():
        list(engine.run([ids[:40]]))
    err = {"c": 0.0, "torch": 0.0}
    nll = {k: [] for k in engines}
    for t in ids[40:240]:
        for name, engine in engines.items():
            nll[name].append(engine.feed([t]).nll_sum)
        for name in err:
            err[name] += (engines[name].last_logits - ref.last_logits).abs().mean().item() / 200
    mean = {k: sum(v) / len(v) for k, v in nll.items()}  # nats per token (a sharp random
    print(family, "mean |logit - fp32|", err, "mean NLL", mean)  # model: ppl in the 1e8s)
    assert err["c"] < 1.1 * err["torch"] + 1e-3
    assert abs(mean["c"] / mean["torch"] - 1) < 1e-3
    assert abs(mean["c"] / mean["fp32"] - 1) < 1e-2
    assert torch.equal(c_step.ring.text_idx, torch_step.ring.text_idx)
    v_rel = ((c_step.ring.v - torch_step.ring.v).norm() / torch_step.ring.v.norm()).item()
    print("ring values, relative difference", v_rel)  # what each step wrote
    assert v_rel < 2e-2


def test_rotated_keys_are_reused_exactly(native, tokenizer, seps, ids, tmp_path):
    """Keys rotated once and kept give the same bits as rotating every key every step, through
    compressions, and after a checkpoint's ring replaces the cache."""
    model = q4_model(tokenizer, "llama", **SHAPES["llama"])
    quantize_linears(model, tokenizer)
    kept, fresh = StreamEngine(model, CFG, seps), StreamEngine(model, CFG, seps)
    for engine in (kept, fresh):
        list(engine.run([ids[:40]]))
    saved = None
    for i, t in enumerate(ids[40:200]):
        if i == 60:
            saved = {k: v for k, v in kept.state_dict().items()}
            torch.save(saved, tmp_path / "ck.pt")
        fresh.one_token.reset()  # forget every rotated key: all are rotated afresh
        kept.feed([t])
        fresh.feed([t])
        assert torch.equal(kept.last_logits, fresh.last_logits), i
    # back to step 60 from the file: the reused keys must not outlive the ring they came from
    kept.load_state_dict(torch.load(tmp_path / "ck.pt"))
    again = StreamEngine(model, CFG, seps)
    again.load_state_dict(torch.load(tmp_path / "ck.pt"))
    for t in ids[100:140]:
        again.one_token.reset()
        kept.feed([t])
        again.feed([t])
        assert torch.equal(kept.last_logits, again.last_logits)


def test_sliding_methods_keep_the_torch_step(native, tokenizer, seps, ids):
    """streamingllm attends in two RoPE frames: the C step (cache positions) is not for it."""
    model = q4_model(tokenizer, "llama", **SHAPES["llama"])
    quantize_linears(model, tokenizer)
    cfg = StreamConfig(method="streamingllm", init=2, window=32, capacity=64, chunk=16)
    engine = StreamEngine(model, cfg, seps)
    list(engine.run([ids[:40]]))
    calls = []
    real = engine.one_token._native
    engine.one_token._native = lambda *a: calls.append(1) or real(*a)
    for t in ids[40:120]:
        assert math.isfinite(engine.feed([t]).nll_sum)
    assert not calls


def test_without_a_compiler_everything_runs_on_torch(tokenizer, seps, ids, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path / "cache"))
    assert cpu_kernels() is None
    assert "did not build" in cpu_kernels_missing()
    model = q4_model(tokenizer, "llama", **SHAPES["llama"])
    quantize_linears(model, tokenizer)
    layer = model.model.layers[0].self_attn.q_proj
    assert layer.q4 is None and layer.weight_int4 is not None  # torch's packing instead
    engine = StreamEngine(model, CFG, seps)
    assert engine.one_token is not None and engine.one_token.native is None
    nll = [engine.feed([t]).nll_sum for t in ids[:80]]
    assert all(math.isfinite(v) for v in nll)


def test_reference_kernels_on_request(monkeypatch):
    monkeypatch.setenv("SEPCLI_KERNELS", "reference")
    assert cpu_kernels() is None
    assert cpu_kernels_missing() == "SEPCLI_KERNELS=reference"


def test_auto_leaves_out_only_the_plain_build(native, monkeypatch, tmp_path):
    monkeypatch.setenv("SEPCLI_KERNELS", "auto")
    assert (cpu_kernels() is not None) == (native.isa != "plain C")
    if X86:
        assert kernels_cpu.load(tmp_path / "v3", march="x86-64-v3").isa == "AVX2"
        assert kernels_cpu.load(tmp_path / "plain", march="x86-64") is None  # and says why
        assert "AVX2" in kernels_cpu.why_not(tmp_path / "plain", march="x86-64")
