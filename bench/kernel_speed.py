"""GPU benchmark of the Triton kernels against their torch paths (needs CUDA; or --smoke).

    python bench/kernel_speed.py                 # full run on a GPU: tables + one JSON line
    python bench/kernel_speed.py --smoke         # tiny shapes, kernel == reference (CPU: interpreter)
    python bench/kernel_speed.py --compile-only  # no GPU needed: compile for sm_90, registers, spills

Ring attention (Llama-3-8B heads: 32 q, 8 kv, dim 128, bf16, B = 1) for cache sizes c in
{324, 800, 4096} and chunk sizes C in {1, 64, 256}; the ring has S = c + C slots, all valid, in
a random slot order (a wrapped ring). Compared with
  * ref:   the torch reference path (gather valid slots + rotate + SDPA with a mask), and
  * sdpa:  SDPA (flash backend where it applies) on keys already rotated and in position order,
           i.e. what attention costs when the engine keeps rotated copies of its cache.
Decoding (C = 1) bandwidth counts the K and V bytes read, against a device-to-device copy's
bandwidth measured in the same run (read + write bytes / time).

GemFilter scoring (32 q heads, 8 kv heads, dim 128, bf16) for n = 32K..128K keys: time and
bandwidth over K against the same copy bandwidth, and the reference's time.

All times are medians of ``triton.testing.do_bench``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import torch
import torch.nn.functional as F

from common import machine

HQ, HKV, D, THETA = 32, 8, 128, 500000.0  # Llama-3-8B attention shapes
CACHES = (324, 800, 4096)
CHUNKS = (1, 64, 256)
SCORE_NS = (32 * 1024, 64 * 1024, 128 * 1024)


def _inv_freq(d: int, theta: float = THETA) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)


def ring_inputs(c: int, chunk: int, device, dtype=torch.bfloat16, hq=HQ, hkv=HKV, d=D):
    """A full ring of S = c + chunk slots in random slot order; queries are the newest chunk."""
    s = c + chunk
    slot_pos = torch.randperm(s, device=device)
    q_pos = torch.arange(c, s, device=device)
    q = torch.randn(1, hq, chunk, d, device=device, dtype=dtype)
    k = torch.randn(1, hkv, s, d, device=device, dtype=dtype)
    v = torch.randn(1, hkv, s, d, device=device, dtype=dtype)
    return q, k, v, slot_pos, q_pos, _inv_freq(d).to(device)


def sdpa_prerotated(q, k, v, slot_pos, q_pos, inv_freq):
    """Baseline operands: q, k rotated once and k, v put in position order (not timed)."""
    from sepcli.kernels.rope import rope_cos_sin, rotate

    order = slot_pos.argsort()
    kc, ks = rope_cos_sin(slot_pos[order], inv_freq)
    qc, qs = rope_cos_sin(q_pos, inv_freq)
    k_rot = rotate(k[:, :, order], kc, ks).contiguous()
    return rotate(q, qc, qs).contiguous(), k_rot, v[:, :, order].contiguous()


def _median_ms(do_bench, fn, *args, **kwargs) -> float:
    """Median time of fn(*args, **kwargs) in ms (do_bench flushes L2 between runs)."""
    return do_bench(functools.partial(fn, *args, **kwargs), return_mode="median")


def copy_bandwidth(do_bench, device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read + written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * nbytes / ms / 1e6


def bench_ring(do_bench, device, copy_gbs: float) -> list[dict]:
    from torch.nn.attention.bias import causal_lower_right

    from sepcli.kernels.ring.reference import ring_attention_reference
    from sepcli.kernels.ring.triton_impl import ring_attention_triton

    rows = []
    for c in CACHES:
        for chunk in CHUNKS:
            args = ring_inputs(c, chunk, device)
            scale = D**-0.5
            qr, kr, vr = sdpa_prerotated(*args)
            s = c + chunk
            mask = None if chunk == 1 else causal_lower_right(chunk, s)
            t_kernel = _median_ms(do_bench, ring_attention_triton, *args, scale)
            t_ref = _median_ms(do_bench, ring_attention_reference, *args, scale)
            t_sdpa = _median_ms(
                do_bench,
                F.scaled_dot_product_attention,
                qr,
                kr,
                vr,
                attn_mask=mask,
                scale=scale,
                enable_gqa=True,
            )
            kv_bytes = 2 * HKV * s * D * args[1].element_size()
            gbs = kv_bytes / t_kernel / 1e6
            rows.append(
                {
                    "c": c,
                    "C": chunk,
                    "kernel_us": round(t_kernel * 1e3, 2),
                    "ref_us": round(t_ref * 1e3, 2),
                    "sdpa_prerot_us": round(t_sdpa * 1e3, 2),
                    "speedup_vs_ref": round(t_ref / t_kernel, 2),
                    "kv_GBps": round(gbs, 1),
                    "kv_bw_of_copy": round(gbs / copy_gbs, 3),
                }
            )
    return rows


def bench_scores(do_bench, device, copy_gbs: float) -> list[dict]:
    from sepcli.kernels.gemscore.reference import gemfilter_scores_reference
    from sepcli.kernels.gemscore.triton_impl import gemfilter_scores_triton

    rows = []
    for n in SCORE_NS:
        q = torch.randn(1, HQ, D, device=device, dtype=torch.bfloat16)
        keys = torch.randn(1, HKV, n, D, device=device, dtype=torch.bfloat16)
        scale = D**-0.5
        t_kernel = _median_ms(do_bench, gemfilter_scores_triton, q, keys, scale)
        t_ref = _median_ms(do_bench, gemfilter_scores_reference, q, keys, scale)
        gbs = keys.numel() * keys.element_size() / t_kernel / 1e6
        rows.append(
            {
                "n": n,
                "kernel_us": round(t_kernel * 1e3, 2),
                "ref_us": round(t_ref * 1e3, 2),
                "speedup_vs_ref": round(t_ref / t_kernel, 2),
                "k_GBps": round(gbs, 1),
                "k_bw_of_copy": round(gbs / copy_gbs, 3),
            }
        )
    return rows


def smoke(device) -> int:
    """Tiny shapes through both kernels and both references; returns a process exit code."""
    from sepcli.kernels.gemscore.reference import gemfilter_scores_reference
    from sepcli.kernels.gemscore.triton_impl import gemfilter_scores_triton
    from sepcli.kernels.ring.reference import ring_attention_reference
    from sepcli.kernels.ring.triton_impl import ring_attention_triton

    bad = 0
    for c, chunk, dtype in ((20, 1, torch.float32), (20, 3, torch.bfloat16)):
        args = ring_inputs(c, chunk, device, dtype=dtype, hq=8, hkv=2, d=64)
        out = ring_attention_triton(*args, 0.125, num_splits=2 if chunk == 1 else 1)
        ref = ring_attention_reference(*args, 0.125)
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        ok = err < (1e-5 if dtype == torch.float32 else 1.5e-2)
        bad += not ok
        print(
            f"ring attention  c={c:3d} C={chunk} {str(dtype):15s} rel err {err:.1e}  {'ok' if ok else 'FAIL'}"
        )
    q = torch.randn(1, 8, 64, device=device)
    keys = torch.randn(1, 2, 45, 64, device=device)
    out = gemfilter_scores_triton(q, keys, 0.125)
    ref = gemfilter_scores_reference(q, keys, 0.125)
    err = ((out - ref).norm() / ref.norm()).item()
    bad += not err < 1e-5
    print(
        f"gemfilter score n=45            fp32 rel err {err:.1e}  {'ok' if err < 1e-5 else 'FAIL'}"
    )
    return 1 if bad else 0


_TL_TYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def compile_only(arch: int) -> int:
    """Compile every kernel configuration the launchers use for CUDA sm_<arch> (no GPU needed:
    Triton's bundled ptxas), print registers and spills; exit code 1 if anything spills."""
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    from sepcli.kernels.gemscore import triton_impl as gf
    from sepcli.kernels.ring import triton_impl as ra

    target = GPUTarget("cuda", arch, 32)
    ptxas = get_ptxas(arch).path
    spilled = 0

    def build(name, fn, signature, meta):
        nonlocal spilled
        meta = dict(meta)
        options = {k: meta.pop(k) for k in ("num_warps", "num_stages") if k in meta}
        signature = {**signature, **{k: "constexpr" for k in meta}}
        kernel = triton.compile(ASTSource(fn, signature, meta), target=target, options=options)
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "k.ptx")
            with open(ptx, "w") as f:
                f.write(kernel.asm["ptx"])
            cmd = [ptxas, f"-arch=sm_{arch}a", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")]
            report = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
        regs = int(re.search(r"Used (\d+) registers", report).group(1))
        spills = int(re.search(r"(\d+) bytes spill stores", report).group(1))
        spilled += spills > 0
        print(
            f"{name:52s} regs {regs:3d}  spill stores {spills:5d} B  smem {kernel.metadata.shared:6d} B"
        )

    for dtype, d, half, rows, split in (
        (torch.bfloat16, 128, 64, 4, True),  # Llama-3-8B decode: G=4 rows, key splits
        (torch.bfloat16, 128, 64, 1024, False),  # C=256 chunk
        (torch.bfloat16, 128, 64, 1024, True),
        (torch.float16, 96, 48, 24, False),
        (torch.bfloat16, 64, 16, 12, True),  # partial rotary
        (torch.float32, 128, 64, 64, True),
    ):
        t = "*" + _TL_TYPES[dtype]
        part = "*fp32" if split else t
        sig = {
            "Q": t,
            "K": t,
            "V": t,
            "SLOT_POS": "*i64",
            "Q_POS": "*i64",
            "INV_FREQ": "*fp32",
            "OUT": t,
            "O_PART": part,
            "M_PART": part,
            "L_PART": part,
            "qk_scale": "fp32",
            "rope_scale": "fp32",
            "S": "i32",
            "C": "i32",
            "ROWS": "i32",
            "HKV": "i32",
            "NUM_SPLITS": "i32",
            "keys_per_split": "i32",
            **{
                f"stride_{t}{a}": "i32" for t in "qkv" for a in ("b", "h", "c" if t == "q" else "s")
            },
        }
        meta = {**ra.kernel_meta(dtype, d, half, rows, False), "SPLIT": split}
        name = f"ring_attention {_TL_TYPES[dtype]} D={d} R={2 * half} rows={rows} split={split}"
        build(name, ra._ring_attention_fwd, sig, meta)
        if split:
            sig = {
                "O_PART": "*fp32",
                "M_PART": "*fp32",
                "L_PART": "*fp32",
                "OUT": t,
                "ROWS": "i32",
                "NUM_SPLITS": "i32",
            }
            meta = {"D": d, "D_P": meta["D_P"], "BLOCK_M": meta["BLOCK_M"], "INTERPRET": False}
            build(f"  combine splits BLOCK_M={meta['BLOCK_M']}", ra._combine_splits, sig, meta)
    for dtype in (torch.bfloat16, torch.float32):
        t = "*" + _TL_TYPES[dtype]
        sig = {
            "Q": t,
            "K": t,
            "LOGITS": "*fp32",
            "BLOCK_MAX": "*fp32",
            "BLOCK_SUM": "*fp32",
            "qk_scale": "fp32",
            "N": "i32",
            "HKV": "i32",
            "G": "i32",
            "NUM_BLOCKS": "i32",
            **{f"stride_{a}": "i32" for a in ("qb", "qh", "kb", "kh", "kn")},
        }
        build(
            f"gemfilter score blocks {_TL_TYPES[dtype]} D=128 G=4",
            gf._score_blocks,
            sig,
            gf.kernel_meta(dtype, 128, 4, False),
        )
    sig = {
        "BLOCK_MAX": "*fp32",
        "BLOCK_SUM": "*fp32",
        "HEAD_MAX": "*fp32",
        "HEAD_SUM": "*fp32",
        "NUM_BLOCKS": "i32",
    }
    build("gemfilter head stats", gf._head_stats, sig, {"BLOCK": 256})
    sig = {
        "LOGITS": "*fp32",
        "HEAD_MAX": "*fp32",
        "HEAD_SUM": "*fp32",
        "OUT": "*fp32",
        "N": "i32",
        "HQ": "i32",
    }
    build("gemfilter sum heads", gf._sum_heads, sig, {"BLOCK_N": 256})
    print("no spills" if not spilled else f"{spilled} kernel(s) spill registers")
    return 1 if spilled else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--smoke", action="store_true", help="tiny correctness run (CPU: Triton interpreter)"
    )
    ap.add_argument(
        "--compile-only",
        action="store_true",
        help="compile the kernels for a CUDA arch without a GPU; report registers and spills",
    )
    ap.add_argument("--arch", type=int, default=90, help="CUDA arch for --compile-only (90: H100)")
    args = ap.parse_args()

    if args.compile_only:
        if os.environ.get("TRITON_INTERPRET") == "1":
            print("--compile-only needs TRITON_INTERPRET unset", file=sys.stderr)
            return 2
        return compile_only(args.arch)
    cuda = torch.cuda.is_available()
    if args.smoke:
        if not cuda:
            os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        return smoke(torch.device("cuda" if cuda else "cpu"))
    if not cuda:
        print(
            "bench/kernel_speed.py needs a CUDA GPU (use --smoke for a CPU interpreter check)",
            file=sys.stderr,
        )
        return 2

    from triton.testing import do_bench

    device = torch.device("cuda")
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth(do_bench, device)
    ring = bench_ring(do_bench, device, copy_gbs)
    scores = bench_scores(do_bench, device, copy_gbs)

    print(f"GPU: {torch.cuda.get_device_name(device)}   torch {torch.__version__}")
    print(f"device-to-device copy: {copy_gbs:.0f} GB/s (read + write)\n")
    print("ring attention, Llama-3-8B heads (32 q / 8 kv / 128), bf16, median us")
    print(
        f"{'c':>5} {'C':>4} {'kernel':>9} {'ref':>9} {'sdpa-prerot':>12} {'x ref':>6} "
        f"{'KV GB/s':>8} {'of copy':>8}"
    )
    for r in ring:
        print(
            f"{r['c']:5d} {r['C']:4d} {r['kernel_us']:9.1f} {r['ref_us']:9.1f} "
            f"{r['sdpa_prerot_us']:12.1f} {r['speedup_vs_ref']:6.2f} {r['kv_GBps']:8.0f} "
            f"{r['kv_bw_of_copy']:8.0%}"
        )
    print("\nGemFilter scoring, 32 q / 8 kv / 128, bf16, median us")
    print(f"{'n':>7} {'kernel':>9} {'ref':>9} {'x ref':>6} {'K GB/s':>8} {'of copy':>8}")
    for r in scores:
        print(
            f"{r['n']:7d} {r['kernel_us']:9.1f} {r['ref_us']:9.1f} {r['speedup_vs_ref']:6.2f} "
            f"{r['k_GBps']:8.0f} {r['k_bw_of_copy']:8.0%}"
        )
    result = {
        **machine(),
        "copy_GBps": round(copy_gbs, 1),
        "ring_attention": ring,
        "gemfilter_scores": scores,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
