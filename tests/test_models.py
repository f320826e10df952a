"""Model resolution, loading, the GGUF conversion cache, device/dtype choice, architecture checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from sepcli import runtime
from sepcli.errors import ModelError, UnsupportedModelError
from sepcli.models import describe, load_model, resolve_dtype, resolve_source
from sepcli.quant import int8_supported


def save_tiny(tmp_path, tokenizer, tiny_llama, **kw):
    folder = tmp_path / "tiny"
    tiny_llama(**kw).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_default_alias_resolves_to_embedded_gguf():
    for alias in ("smollm2", "default", "SmolLM2-135M-Instruct"):
        src = resolve_source(alias)
        assert src.kind == "gguf" and src.path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.mark.parametrize(
    "spec, fragment",
    [("", "empty"), ("no-such-thing", "not found"), ("./missing.gguf", "no such GGUF")],
)
def test_bad_specs_raise_model_error(spec, fragment):
    with pytest.raises(ModelError, match=fragment):
        resolve_source(spec)


def test_folder_without_config_and_non_gguf_file_are_refused(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        resolve_source(str(tmp_path))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0")
    with pytest.raises(ModelError, match="not a .gguf"):
        resolve_source(str(f))


def test_local_folder_that_does_not_load_is_not_called_missing(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ModelError, match="cannot load model") as info:
        load_model(str(tmp_path))
    assert "not found locally" not in str(info.value)


def test_unknown_hub_id_fails_fast_offline():
    # local_files_only: must answer at once with a clear error, never try the network.
    with pytest.raises(ModelError, match="not found locally"):
        load_model("sepcli-test/definitely-not-cached")


@pytest.mark.parametrize(
    "flags, amx",
    [("avx512f avx512_bf16 avx512_vnni", False), ("avx512_bf16 amx_bf16 amx_tile", True)],
)
def test_only_amx_counts_as_a_bf16_cpu(monkeypatch, flags, amx):
    # AVX512-BF16 alone loses to int8 (docs/models.md), so auto picks int8 there.
    class FakePath:
        def __init__(self, name):
            assert name == "/proc/cpuinfo"

        def read_text(self):
            return f"processor : 0\nflags : fpu sse2 {flags}\n"

    monkeypatch.setattr(runtime, "Path", FakePath)
    assert runtime.cpu_has_amx() is amx


@pytest.mark.parametrize(
    "flags, dot",
    [("avx2 fma", False), ("avx512f avx512_vnni", True), ("avx2 avx_vnni", True)],
)
def test_int8_dot_products_read_from_cpu_flags(monkeypatch, flags, dot):
    class FakePath:
        def __init__(self, name):
            assert name == "/proc/cpuinfo"

        def read_text(self):
            return f"processor : 0\nflags : fpu sse2 {flags}\n"

    monkeypatch.setattr(runtime, "Path", FakePath)
    assert runtime.cpu_has_int8_dot() is dot


def test_auto_dtype_follows_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: True)
    assert resolve_dtype("auto", cpu) == "bf16"
    monkeypatch.setattr(runtime, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: True)
    assert resolve_dtype("auto", cpu) == ("int8" if int8_supported(cpu) is None else "fp32")
    # an AVX2-only CPU: oneDNN's int8 GEMM has no fast path there, fp32 is the default
    monkeypatch.setattr(runtime, "cpu_has_int8_dot", lambda: False)
    assert resolve_dtype("auto", cpu) == "fp32"
    # a GGUF whose every tensor the fast block kernels run: its own blocks, AMX or not
    for amx in (True, False):
        monkeypatch.setattr(runtime, "cpu_has_amx", lambda amx=amx: amx)
        assert resolve_dtype("auto", cpu, gguf_blocks=True) == "gguf"
        assert resolve_dtype("auto", cpu, gguf_blocks=False) == ("bf16" if amx else "fp32")
    assert resolve_dtype("auto", torch.device("cuda"), gguf_blocks=True) == "bf16"
    assert resolve_dtype("auto", torch.device("cuda")) == "bf16"
    assert resolve_dtype("fp16", cpu) == "fp16"
    with pytest.raises(ModelError, match="int4"):
        resolve_dtype("int4", cpu)


def test_local_folder_loads_and_describes(tmp_path, tokenizer, tiny_llama):
    folder = save_tiny(tmp_path, tokenizer, tiny_llama, layers=3, hidden=96, heads=6, kv_heads=2)
    lm = load_model(str(folder), device="cpu", dtype="fp32")
    facts = describe(lm)
    assert facts["layers"] == 3 and facts["q_heads"] == 6 and facts["kv_heads"] == 2
    assert facts["head_dim"] == 16 and facts["rope_theta"] == 10000.0
    assert facts["dtype"] == "fp32" and facts["device"] == "cpu"
    assert json.loads(json.dumps(facts)) == facts  # JSON-able as is


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100)).save_pretrained(
        folder
    )
    with pytest.raises(UnsupportedModelError, match="GPT2LMHeadModel"):
        load_model(str(folder))


def test_failed_gguf_read_leaves_no_cache(tmp_path, monkeypatch):
    """A file that is not a GGUF is a one-line error, and nothing is cached for it."""
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path / "cache"))
    gguf = tmp_path / "broken.gguf"
    gguf.write_bytes(b"GGUF but not really")
    with pytest.raises(ModelError, match="cannot read broken.gguf"):
        load_model(str(gguf))
    assert not (tmp_path / "cache" / "gguf").exists() or not list(
        (tmp_path / "cache" / "gguf").iterdir()
    )


@pytest.mark.real
def test_embedded_model_blocks_and_dequantised_agree(tmp_path, monkeypatch):
    """The embedded Q4_1 file in its blocks and dequantised to fp32: the same logits (the
    kernels' 8-bit activations aside), and only small files cached."""
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path))
    blocks = load_model("smollm2", device="cpu", dtype="gguf")
    fp32 = load_model("smollm2", device="cpu", dtype="fp32")
    assert not blocks.from_cache and fp32.from_cache
    (folder,) = (tmp_path / "gguf").iterdir()
    assert not list(folder.glob("*.safetensors"))
    ids = blocks.tokenizer("The printing press changed how ideas spread.", return_tensors="pt")
    with torch.no_grad():
        a = blocks.model(ids.input_ids).logits
        b = fp32.model(ids.input_ids).logits
    # Measured 0.0232 on AVX512-VNNI (activations quantised per 32 to int8 in every projection
    # of 30 layers); stream perplexity of the two differs by 0.2% (docs/models.md).
    err = ((a - b).norm() / b.norm()).item()
    print("relative logit error, blocks vs fp32:", err)
    assert err < 3e-2


@pytest.mark.real
def test_embedded_model_facts_and_perplexity(real_model):
    from sepcli.texts import essays_text

    facts = describe(real_model)
    assert facts["architecture"] == "LlamaForCausalLM"
    assert (facts["layers"], facts["q_heads"], facts["kv_heads"]) == (30, 9, 3)
    assert facts["head_dim"] == 64 and facts["context_length"] == 8192
    assert facts["rope_theta"] == 100000.0
    tok = real_model.tokenizer
    ids = tok(essays_text(max_chars=3000), return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        out = real_model.model(ids, labels=ids)
    ppl = math.exp(out.loss.item())
    assert 2.0 < ppl < 100.0, ppl
