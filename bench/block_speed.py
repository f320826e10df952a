"""Speed of the C products on GGUF blocks (kernels/cpu/blocks.h) per format: one token (the
matrix-vector product, memory-bound: GB/s of weights read) and a chunk (the blocked GEMM:
tokens per second), on Qwen2.5-1.5B's MLP shapes, per thread count. Random blocks (valid
scales), medians of --repeat calls. Wrap in ``flock /tmp/sepcli-bench.lock``.

    python bench/block_speed.py [--types Q4_K,Q6_K] [--threads 1,2] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import sepcli.kernels.quant as kq
from sepcli.kernels.quant import kernels as block_kernels

SHAPES = ((8960, 1536), (1536, 8960))  # (out, in): gate/up and down of Qwen2.5-1.5B


def median_s(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--types", default="Q4_0,Q4_1,Q5_0,Q5_1,Q8_0,Q4_K,Q5_K,Q6_K")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeat", type=int, default=20)
    args = p.parse_args()
    kern = block_kernels.cpu_kernels()
    gen = torch.Generator().manual_seed(0)
    rows = []
    for qtype in args.types.split(","):
        for out, n_in in SHAPES:
            w = kq.random_blocks(qtype, out, n_in, gen)
            x1, xt = torch.randn(1, n_in, generator=gen), torch.randn(args.tokens, n_in, generator=gen)
            for t in map(int, args.threads.split(",")):
                s1 = median_s(lambda: kern.block_matmul(x1, w, None, t), args.repeat)
                st = median_s(lambda: kern.block_matmul(xt, w, None, t), max(3, args.repeat // 5))
                row = {"type": qtype, "out": out, "in": n_in, "threads": t,
                       "matvec_gb_s": round(kq.nbytes(w) / s1 / 1e9, 2),
                       "matvec_ms": round(s1 * 1e3, 3),
                       "gemm_tok_s": round(args.tokens / st, 1),
                       "gemm_gflop_s": round(2 * out * n_in * args.tokens / st / 1e9, 1)}  # fmt: skip
                rows.append(row)
                print(json.dumps(row))
    print(json.dumps({"isa": kern.isa, "rows": len(rows)}))


if __name__ == "__main__":
    main()
