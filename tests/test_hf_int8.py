"""A HF checkpoint (bf16 safetensors, several shards) into the int8 path one layer at a time
(sepcli/weights/hf_int8.py): the same model as quantising the whole fp32 model
(:func:`sepcli.quant.quantize_linears`), at a peak memory near the loaded model's."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sepcli.models import load_model
from sepcli.quant import Int8Linear, int8_supported, quantize_linears
from tests.helpers import build_tiny_llama

pytestmark = pytest.mark.skipif(
    int8_supported(torch.device("cpu")) is not None, reason="no int8 CPU path in this torch"
)
SEED = 4
ROOT = Path(__file__).resolve().parents[1]


def save_bf16(folder, tokenizer, **shape):
    model = build_tiny_llama(len(tokenizer), seed=SEED, dtype=torch.bfloat16, **shape)
    model.save_pretrained(folder, max_shard_size="2MB")  # several shards
    tokenizer.save_pretrained(folder)
    assert len(list(Path(folder).glob("*.safetensors"))) > 1
    return model


def test_layer_by_layer_int8_equals_whole_model_int8(tmp_path, tokenizer, essay_ids):
    print(f"seed {SEED}")
    save_bf16(tmp_path, tokenizer, layers=3, hidden=128, heads=4, kv_heads=2)
    lm = load_model(str(tmp_path), device="cpu", dtype="int8")
    assert lm.dtype_name == "int8"
    linears = [m for m in lm.model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 3 * 7 + 1 and linears[-1].tied
    from transformers import AutoModelForCausalLM

    whole = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    quantize_linears(whole, tokenizer)
    ids = torch.tensor([essay_ids[:120]])
    with torch.no_grad():
        a, b = lm.model(ids).logits, whole(ids).logits
    err = ((a - b).norm() / b.norm()).item()
    print("relative logit difference, layer by layer against whole-model int8:", err)
    assert err < 1e-3
    fp32 = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    with torch.no_grad():
        ref = fp32(ids).logits
    assert ((a - ref).norm() / ref.norm()).item() < 0.05  # and near the bf16 weights in fp32


PEAK = textwrap.dedent(
    """
    import json, sys, torch
    import transformers.models.llama.modeling_llama  # code, not the model's memory
    from transformers import AutoTokenizer
    from sepcli.memory import PeakMemory, return_freed_memory, rss_bytes
    from sepcli.models import load_model
    from sepcli.quant import cpu_kernels
    cpu_kernels()
    AutoTokenizer.from_pretrained(sys.argv[1])
    return_freed_memory()
    base = rss_bytes()
    with PeakMemory(torch.device("cpu"), interval_s=0.002) as pm:
        lm = load_model(sys.argv[1], device="cpu", dtype="int8")
    return_freed_memory()
    loaded = rss_bytes() - base  # the model, its tokenizer and config, as the process holds them
    tensors = sum(t.numel() * t.element_size() for t in [*lm.model.parameters(), *lm.model.buffers()])
    print(json.dumps({"peak": pm.peak_bytes, "loaded": loaded, "tensors": tensors}))
    """
)


def test_peak_memory_is_near_the_loaded_model(tmp_path, tokenizer):
    """Peak RSS growth while loading <= 1.3x the loaded model's (tensors, tokenizer, config), in
    a fresh process, sampled every 2 ms."""
    save_bf16(tmp_path, tokenizer, layers=4, hidden=512, heads=8, kv_heads=2)
    out = subprocess.run(
        [sys.executable, "-c", PEAK, str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    print({k: round(v / 2**20, 1) for k, v in m.items()}, "MiB")
    assert m["loaded"] >= m["tensors"]
    assert m["peak"] <= 1.3 * m["loaded"]
