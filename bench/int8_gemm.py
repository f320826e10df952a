"""Is the int8 GEMM fast on this CPU? ``torch._int_mm`` (what ``--dtype int8`` runs chunks on)
against an fp32 matmul on the embedded model's layer shapes, side by side in alternating rounds.

    python bench/int8_gemm.py [--tokens 224] [--rounds 5] [--threads 1]

oneDNN's int8 GEMM is fast only where the CPU has integer dot products (AVX512-VNNI, AVX-VNNI,
AMX); `--dtype auto` picks int8 only there (`sepcli.runtime.cpu_has_int8_dot`). Prints one line
per round and a JSON summary; writes bench/results/int8-gemm.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from sepcli.runtime import cpu_flags, cpu_has_int8_dot

from common import command, machine, write_result

# (out, in) of SmolLM2-135M's projections: q/o, k/v, gate/up, down
SHAPES = ((576, 576), (192, 576), (1536, 576), (576, 1536))


def one_round(x32, w32, x8, w8, reps: int) -> tuple[float, float]:
    """Seconds per layer pass (all SHAPES once) for fp32 and for int8."""
    t0 = time.perf_counter()
    for _ in range(reps):
        for a, w in zip(x32, w32, strict=True):
            a @ w.t()
    fp32 = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        for a, w in zip(x8, w8, strict=True):
            torch._int_mm(a, w.t())
    return fp32, (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=224, help="rows per GEMM (a chunk)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=5, help="layer passes per round")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    print("seed 0", flush=True)
    x32 = [torch.randn(args.tokens, n_in, generator=gen) for _, n_in in SHAPES]
    w32 = [torch.randn(out, n_in, generator=gen) for out, n_in in SHAPES]
    x8 = [torch.randint(-127, 128, a.shape, generator=gen, dtype=torch.int8) for a in x32]
    w8 = [torch.randint(-127, 128, w.shape, generator=gen, dtype=torch.int8) for w in w32]
    one_round(x32, w32, x8, w8, 1)  # warm-up: oneDNN builds its kernels on first use
    rounds = []
    for r in range(args.rounds):
        fp32, int8 = one_round(x32, w32, x8, w8, args.reps)
        rounds.append({"fp32_ms": fp32 * 1e3, "int8_ms": int8 * 1e3, "int8_over_fp32": int8 / fp32})
        print(f"round {r}: fp32 {fp32 * 1e3:.2f} ms, int8 {int8 * 1e3:.2f} ms "
              f"(int8 takes {int8 / fp32:.2f}x fp32's time)", flush=True)  # fmt: skip
    dot = sorted({"avx512_vnni", "avx_vnni", "amx_int8", "avx2", "avx512f"} & cpu_flags())
    result = {
        "command": command(),
        "machine": machine(),
        "cpu_flags": dot,
        "cpu_has_int8_dot": cpu_has_int8_dot(),
        "tokens": args.tokens,
        "shapes": SHAPES,
        "rounds": rounds,
        "median_int8_over_fp32": statistics.median(r["int8_over_fp32"] for r in rounds),
    }
    write_result("int8-gemm.json", result)
    print(json.dumps({k: result[k] for k in ("cpu_flags", "median_int8_over_fp32")}))


if __name__ == "__main__":
    main()
