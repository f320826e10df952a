"""Load times (first conversion vs cached) and bf16-vs-fp32 forward speed on this machine.

    python bench/models.py [--tokens 512] [--repeats 5]

Measures side by side in one run: the two dtypes' forwards are interleaved so that load on the
machine hits both alike. Prints a table and a JSON line; docs/models.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from sepcli.models import load_model
from sepcli.runtime import cpu_has_amx

from common import machine


def forward_tok_per_s(model, ids: torch.Tensor) -> float:
    t0 = time.perf_counter()
    with torch.inference_mode():
        model(ids, use_cache=False)
    return ids.numel() / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512, help="tokens per forward")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SEPCLI_CACHE_DIR"] = cache
        first = load_model("smollm2", device="cpu", dtype="fp32")
        cached = load_model("smollm2", device="cpu", dtype="fp32")
    bf16 = load_model("smollm2", device="cpu", dtype="bf16")  # user cache

    ids = torch.randint(100, 40000, (1, args.tokens))
    speeds = {"fp32": [], "bf16": []}
    for lm in (cached, bf16):  # warm-up
        forward_tok_per_s(lm.model, ids)
    for _ in range(args.repeats):
        speeds["fp32"].append(forward_tok_per_s(cached.model, ids))
        speeds["bf16"].append(forward_tok_per_s(bf16.model, ids))
    med = {k: statistics.median(v) for k, v in speeds.items()}
    result = {
        **machine(),
        "cpu_amx": cpu_has_amx(),
        "load_first_s": round(first.load_s, 2),
        "load_cached_s": round(cached.load_s, 2),
        "tokens_per_forward": args.tokens,
        "fp32_tok_per_s": round(med["fp32"], 1),
        "bf16_tok_per_s": round(med["bf16"], 1),
        "bf16_over_fp32": round(med["bf16"] / med["fp32"], 2),
    }
    print(f"load, first (GGUF dequantise + convert): {result['load_first_s']:8.2f} s")
    print(f"load, cached (safetensors):              {result['load_cached_s']:8.2f} s")
    print(f"forward fp32 ({args.tokens} tokens):           {result['fp32_tok_per_s']:8.1f} tok/s")
    print(f"forward bf16 ({args.tokens} tokens):           {result['bf16_tok_per_s']:8.1f} tok/s")
    print(f"bf16 / fp32:                             {result['bf16_over_fp32']:8.2f} x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
