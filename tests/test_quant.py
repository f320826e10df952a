"""The int8 CPU path (sepcli.quant): the layer against a naive quantised matmul written out in
float64, a tiny model against its fp32 self, and the CLI's --dtype int8 / --threads rules."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.errors import ModelError
from sepcli.quant import (
    GROUP,
    Int8Linear,
    exact_int4,
    int8_supported,
    is_int8,
    quantize_linears,
    torch_int4_pack,
)
from sepcli.runtime import physical_cores, resolve_dtype
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essays_text
from tests.helpers import SHARP, build_tiny_family, build_tiny_llama, round_to_q4_1

pytestmark = pytest.mark.skipif(
    int8_supported(torch.device("cpu")) is not None, reason="no int8 CPU path in this torch"
)
SEED = 3


def naive_int8(x, w, b, act_max, alpha=0.5):
    """SmoothQuant + per-output-channel int8 weights + per-token int8 inputs, in float64 with
    explicit rounding: what Int8Linear must compute exactly (up to fp32 rounding)."""
    x, w = x.double(), w.double()
    s = act_max.double().clamp_min(1e-5) ** alpha / w.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)
    s = s.clamp_min(1e-5)
    ws = w * s
    w_scale = ws.abs().amax(1) / 127
    wq = torch.round(ws / w_scale[:, None])
    xs = x / s
    x_scale = xs.abs().amax(-1, keepdim=True) / 127
    xq = torch.round(xs / x_scale)
    y = (xq @ wq.T) * x_scale * w_scale
    return y if b is None else y + b.double()


@pytest.mark.parametrize("tokens,inp,out,bias", [(1, 60, 63, False), (37, 96, 160, True)])
def test_int8_linear_matches_the_naive_quantised_matmul(tokens, inp, out, bias):
    gen = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}")
    lin = nn.Linear(inp, out, bias=bias)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(out, inp, generator=gen) * 0.05)
        if bias:
            lin.bias.copy_(torch.randn(out, generator=gen))
    x = torch.randn(2, tokens, inp, generator=gen)
    x[..., 5] *= 30  # an outlier channel, as LLM activations have
    act_max = x.abs().reshape(-1, inp).amax(0)
    y = Int8Linear(lin, act_max)(x)
    ref = naive_int8(x, lin.weight, lin.bias, act_max)
    assert y.shape == (2, tokens, out) and y.dtype == torch.float32
    assert ((y.double() - ref).norm() / ref.norm()).item() < 1e-5
    exact = lin(x).double()
    assert ((y.double() - exact).norm() / exact.norm()).item() < 0.03  # and near fp32


@pytest.fixture(scope="module")
def ids(essay_ids):
    return essay_ids


def test_tiny_model_int8_stays_close_to_fp32(tokenizer, seps, ids):
    print(f"seed {SEED}")
    fp32 = build_tiny_llama(len(tokenizer), layers=2, hidden=64, seed=SEED)
    int8 = build_tiny_llama(len(tokenizer), layers=2, hidden=64, seed=SEED)
    n = quantize_linears(int8, tokenizer)
    assert n == 2 * 7 + 1 and is_int8(int8) and not is_int8(fp32)
    cfg = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=16)
    nll = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        engine = StreamEngine(model, cfg, seps)
        assert engine.ring.k.dtype == torch.float32  # the ring stays in the compute dtype
        nll[name] = torch.cat([s.nll for s in engine.run([ids])])
    ppl = {k: math.exp(v.mean().item()) for k, v in nll.items()}
    print(ppl)
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.01
    assert (nll["int8"] - nll["fp32"]).abs().max().item() < 0.1


def test_resolve_dtype_int8_is_cpu_only():
    assert resolve_dtype("int8", torch.device("cpu")) == "int8"
    with pytest.raises(ModelError, match="CPU only"):
        resolve_dtype("int8", torch.device("cuda"))


runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-int8")
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=SEED
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_info_reports_int8_and_threads(tiny_dir):
    result = runner.invoke(
        app, ["info", "-m", tiny_dir, "--dtype", "int8", "--threads", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["dtype"] == "int8" and facts["threads"] == 1
    fp32 = json.loads(
        runner.invoke(app, ["info", "-m", tiny_dir, "--dtype", "fp32", "--json"]).stdout
    )
    assert facts["parameters"] == fp32["parameters"]  # packed int8 weights are still counted
    assert fp32["dtype"] == "fp32" and fp32["threads"] == physical_cores()  # the default
    # not a 4-bit model: its int8 layers take one token through the C int8 kernel
    assert facts["decode_kernels"].startswith("C int8 kernels"), facts["decode_kernels"]
    assert fp32["decode_kernels"] == "torch"


@pytest.mark.parametrize(
    "command",
    [
        ["info"],
        ["stream", "-"],
        ["ask", "doc.txt", "q"],
        ["gemfilter", "doc.txt", "q"],
        ["calibrate"],
    ],
)
@pytest.mark.parametrize("threads", ["0", "-2"])
def test_bad_threads_is_one_line_exit_2(tiny_dir, tmp_path, monkeypatch, command, threads):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "doc.txt").write_text("a short document.")
    result = runner.invoke(app, [*command, "-m", tiny_dir, "--threads", threads], input="text")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--threads must be >= 1" in lines[0], result.output


def test_checkpoint_of_another_dtype_is_refused(tiny_dir, tmp_path):
    ck = tmp_path / "run.ckpt"
    text = essays_text(max_chars=1500)
    small = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]
    first = runner.invoke(
        app,
        [
            "stream",
            "-",
            "-m",
            tiny_dir,
            "--dtype",
            "fp32",
            "--json",
            *small,
            "--max-tokens",
            "40",
            "--checkpoint",
            str(ck),
        ],
        input=text,
    )
    assert first.exit_code == 0, first.output
    resumed = runner.invoke(
        app,
        ["stream", "-", "-m", tiny_dir, "--dtype", "int8", "--json", *small, "--resume", str(ck)],
        input=text,
    )
    assert resumed.exit_code == 2 and "dtype" in resumed.output, resumed.output


@pytest.mark.real
def test_embedded_model_int8_perplexity_within_one_percent(real_model, seps):
    """The accuracy bound on real weights and text, short: 896 tokens of the essays."""
    from sepcli.models import load_model

    int8 = load_model("smollm2", device="cpu", dtype="int8")
    tok = real_model.tokenizer
    ids = [tok.bos_token_id] + tok(essays_text(max_chars=6000), add_special_tokens=False)[
        "input_ids"
    ][:895]
    ppl = {}
    for name, lm in (("fp32", real_model), ("int8", int8)):
        engine = StreamEngine(lm.model, StreamConfig(), seps)
        nll = torch.cat([s.nll for s in engine.run([ids])])
        ppl[name] = math.exp(nll.mean().item())
    print(ppl)
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.01

    # The embedded GGUF is Q4_1: every projection decodes on its exact 4-bit weights, through
    # the one-token step. Scored one token at a time (the fp32 reference in one chunk: any
    # chunk size gives the same scores).
    quantised = [m for m in int8.model.modules() if isinstance(m, Int8Linear)]
    assert sum(m.has_int4 for m in quantised) == len(quantised) - 1  # not the head
    one = StreamEngine(int8.model, StreamConfig(chunk=1), seps)
    assert one.one_token is not None
    assert one.one_token.native is not None  # the C step (tests/test_cpu_kernels.py)
    short = ids[:200]
    nll = {
        "fp32": torch.cat(
            [s.nll for s in StreamEngine(real_model.model, StreamConfig(), seps).run([short])]
        ),
        "int8, one token at a time": torch.cat([s.nll for s in one.run([short])]),
    }
    ppl = {k: math.exp(v.mean().item()) for k, v in nll.items()}
    print(ppl)
    assert abs(ppl["int8, one token at a time"] / ppl["fp32"] - 1) < 0.01


# ------------------------------------------------------------------ 4-bit weights, one token


def test_exact_int4_takes_q4_1_weights_and_refuses_others():
    gen = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}")
    lin = nn.Linear(96, 48, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(48, 96, generator=gen) * 0.05)
    plain = lin.weight.detach().clone()
    model = nn.Module()
    model.model = nn.Module()
    model.model.layers = nn.ModuleList([nn.Sequential(lin)])
    round_to_q4_1(model)
    w = lin.weight.detach()
    found = exact_int4(w)
    assert found is not None
    codes, step, low = found
    assert int(codes.min()) == 0 and int(codes.max()) == 15
    back = low.repeat_interleave(GROUP, 1) + codes.float() * step.repeat_interleave(GROUP, 1)
    assert (back - w).abs().max().item() <= 1e-6  # the grid itself, not an approximation
    # torch's kernel (where the C kernels are missing) on its packing: bf16 activations, scales
    x = torch.randn(1, 96, generator=gen)
    packed, scale_zero = torch_int4_pack(*found)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.to(torch.bfloat16), packed, GROUP, scale_zero
    ).float()
    ref = x @ w.T
    print("relative error", ((y - ref).norm() / ref.norm()).item())
    assert ((y - ref).norm() / ref.norm()).item() < 1e-2
    assert exact_int4(plain) is None  # 4 bits would round it
    assert exact_int4(plain[:, :80]) is None  # inputs not a multiple of the group


def q4_model(tokenizer, family="llama", seed=SEED):
    """A tiny model of ``family`` with Q4_1-gridded layer weights, quantised."""
    model = build_tiny_family(family, len(tokenizer), seed=seed, initializer_range=SHARP)
    round_to_q4_1(model)
    quantize_linears(model, tokenizer)
    return model


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_one_token_step_equals_the_general_path(tokenizer, seps, ids, family):
    print(f"seed {SEED}")
    model = q4_model(tokenizer, family)
    cfg = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=16)
    fast, general = StreamEngine(model, cfg, seps), StreamEngine(model, cfg, seps)
    assert fast.one_token is not None
    general.one_token = None
    for engine in (fast, general):
        list(engine.run([ids[:40]]))
    worst = 0.0
    for t in ids[40:240]:  # one at a time, past 3 wraps of the 64-slot ring
        a, b = fast.feed([t]), general.feed([t])
        assert a.nll_sum == pytest.approx(b.nll_sum, rel=1e-5, abs=1e-6)
        worst = max(worst, (fast.last_logits - general.last_logits).abs().max().item())
    print("largest logit difference", worst)
    assert worst < 1e-4
    assert torch.equal(fast.ring.text_idx, general.ring.text_idx)  # the same tokens kept


@pytest.mark.parametrize("family", ["qwen3", "phi3"])
def test_one_token_path_declines_other_blocks(tokenizer, seps, family):
    model = q4_model(tokenizer, family)  # Qwen3's q/k norms, Phi-3's fused projections
    cfg = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=16)
    assert StreamEngine(model, cfg, seps).one_token is None


def test_one_token_path_is_only_for_exact_4bit_layers(tokenizer, seps):
    cfg = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=16)
    plain = build_tiny_llama(len(tokenizer), layers=2, hidden=64, seed=SEED)
    quantize_linears(plain, tokenizer)  # int8, but its weights are not 4-bit
    fp32 = build_tiny_llama(len(tokenizer), layers=2, hidden=64, seed=SEED)
    round_to_q4_1(fp32)  # 4-bit values, but not quantised
    for model in (plain, fp32):
        assert StreamEngine(model, cfg, seps).one_token is None


def test_one_token_decode_stays_close_to_fp32(tokenizer, seps, ids):
    """Scoring one token at a time on the 4-bit path against the same Q4_1 weights in fp32."""
    print(f"seed {SEED}")
    fp32 = build_tiny_family("llama", len(tokenizer), seed=SEED, initializer_range=SHARP)
    round_to_q4_1(fp32)
    quantised = q4_model(tokenizer)
    cfg = StreamConfig(init=2, sep=8, window=32, capacity=64, chunk=1)
    nll = {}
    for name, model in (("fp32", fp32), ("int4", quantised)):
        engine = StreamEngine(model, cfg, seps)
        nll[name] = torch.cat([s.nll for s in engine.run([ids[:200]])])
    ppl = {k: math.exp(v.mean().item()) for k, v in nll.items()}
    print(ppl)
    assert abs(ppl["int4"] / ppl["fp32"] - 1) < 0.01
