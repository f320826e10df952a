"""GemFilter scoring in Triton: the last query's per-head softmax over N keys, summed over heads.

Same contract as :func:`kernels.gemscore.reference.gemfilter_scores_reference`; the torch
reference is the spec and the CPU path. The work is memory-bound on the keys, so K is read once:

1. ``_score_blocks``: one program per (key block, batch x kv head) computes the logits of the
   G = Hq / Hkv query heads sharing that kv head against BLOCK_N keys (one MMA tile), stores
   them (fp32 [B, Hq, N], base-2 units: 16x smaller than K for Llama-3-8B's shapes) together
   with each head's block max and block sum of 2^(logit - max).
2. ``_head_stats``: one program per (batch, q head) folds its block stats into the head's
   softmax max and normaliser.
3. ``_sum_heads``: one program per (key block, batch) sums 2^(logit - max) / norm over the
   heads from the stored logits; K is not read again.

Top-k stays in torch (``scores.topk``) on the returned [B, N] scores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import checks

_LOG2E = 1.4426950408889634
_MAX_HEAD_DIM = 256


@triton.jit
def _score_blocks(
    Q,
    K,
    LOGITS,
    BLOCK_MAX,
    BLOCK_SUM,
    qk_scale,  # softmax scale * log2(e)
    N,
    HKV,
    G,
    NUM_BLOCKS,
    stride_qb,
    stride_qh,
    stride_kb,
    stride_kh,
    stride_kn,  # the head dim is contiguous
    D: tl.constexpr,
    D_P: tl.constexpr,
    BLOCK_G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    FP32: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # b * HKV + kv head
    g = tl.arange(0, BLOCK_G)
    g_ok = g < G
    d = tl.arange(0, D_P)
    d_ok = d < D
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N

    b = pid_bh // HKV
    h = pid_bh % HKV
    heads = pid_bh * G + g  # (BLOCK_G,) flat b * Hq + q head, for the outputs
    q_ptr = Q + b * stride_qb + (h * G + g)[:, None] * stride_qh + d[None, :]
    q = tl.load(q_ptr, mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    k_ptr = K + b * stride_kb + h * stride_kh + n[:, None] * stride_kn + d[None, :]
    k = tl.load(k_ptr, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
    if INTERPRET:  # the CPU interpreter has no bf16 matmul; the values are exact in fp32
        q = q.to(tl.float32)
        k = k.to(tl.float32)
    if FP32:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")  # (BLOCK_G, BLOCK_N)
    else:
        s = tl.dot(q, tl.trans(k))
    s = s * qk_scale
    tl.store(LOGITS + heads[:, None] * N + n[None, :], s, mask=g_ok[:, None] & n_ok[None, :])

    s = tl.where(n_ok[None, :], s, float("-inf"))
    m = tl.max(s, axis=1)  # finite: every block has at least one key
    total = tl.sum(tl.exp2(s - m[:, None]), axis=1)
    tl.store(BLOCK_MAX + heads * NUM_BLOCKS + pid_n, m, mask=g_ok)
    tl.store(BLOCK_SUM + heads * NUM_BLOCKS + pid_n, total, mask=g_ok)


@triton.jit
def _head_stats(BLOCK_MAX, BLOCK_SUM, HEAD_MAX, HEAD_SUM, NUM_BLOCKS, BLOCK: tl.constexpr):
    head = tl.program_id(0).to(tl.int64)  # b * Hq + q head
    base = head * NUM_BLOCKS
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    for i0 in range(0, NUM_BLOCKS, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        m = tl.maximum(m, tl.load(BLOCK_MAX + base + i, mask=i < NUM_BLOCKS, other=float("-inf")))
    m_all = tl.max(m, axis=0)
    total = tl.zeros([BLOCK], tl.float32)
    for i0 in range(0, NUM_BLOCKS, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        ok = i < NUM_BLOCKS
        bm = tl.load(BLOCK_MAX + base + i, mask=ok, other=float("-inf"))
        total += tl.load(BLOCK_SUM + base + i, mask=ok, other=0.0) * tl.exp2(bm - m_all)
    tl.store(HEAD_MAX + head, m_all)
    tl.store(HEAD_SUM + head, tl.sum(total, axis=0))


@triton.jit
def _sum_heads(LOGITS, HEAD_MAX, HEAD_SUM, OUT, N, HQ, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < N
    acc = tl.zeros([BLOCK_N], tl.float32)
    for h in range(0, HQ):
        head = b * HQ + h
        m = tl.load(HEAD_MAX + head)
        inv = 1.0 / tl.load(HEAD_SUM + head)
        s = tl.load(LOGITS + head * N + n, mask=n_ok, other=float("-inf"))
        acc += tl.exp2(s - m) * inv
    tl.store(OUT + b * N + n, acc, mask=n_ok)


def _interpreted() -> bool:
    """True when the kernels were built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETED


_INTERPRETED = not isinstance(_score_blocks, triton.runtime.JITFunction)


def kernel_meta(dtype: torch.dtype, d: int, g: int, interpret: bool) -> dict:
    """Compile-time parameters of ``_score_blocks`` and its launch options.

    Spill-free on sm_90 (``bench/kernel_speed.py --compile-only``) with 8 warps: 128-key tiles for
    16-bit inputs (4 warps spill there), 64-key tiles for fp32 inputs (ieee dots).
    """
    fp32 = dtype == torch.float32
    return dict(
        D=d,
        D_P=max(16, triton.next_power_of_2(d)),
        BLOCK_G=max(16, triton.next_power_of_2(g)),
        BLOCK_N=32 if interpret else (64 if fp32 else 128),
        FP32=fp32,
        INTERPRET=interpret,
        num_warps=8,
    )


def _check_inputs(q_last, keys, scale) -> None:
    checks.require_tensors({"q_last": q_last, "keys": keys})
    if q_last.dim() != 3:
        raise ValueError(f"q_last must be [B, Hq, D], got shape {tuple(q_last.shape)}")
    if keys.dim() != 4:
        raise ValueError(f"keys must be [B, Hkv, N, D], got shape {tuple(keys.shape)}")
    b, hq, d = q_last.shape
    kb, hkv, _, kd = keys.shape
    if kb != b or kd != d:
        raise ValueError(
            f"keys shape {tuple(keys.shape)} does not match q_last shape "
            f"{tuple(q_last.shape)} in batch or head dim"
        )
    checks.require_heads(hq, hkv, d, _MAX_HEAD_DIM)
    checks.require_operands("q_last", {"q_last": q_last, "keys": keys}, {}, _interpreted())
    checks.require_scale(scale)


def gemfilter_scores_triton(q_last: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Triton GemFilter scores; arguments and result as in ``gemfilter_scores_reference``.

    q_last [B, Hq, D] and keys [B, Hkv, N, D] (same float dtype, contiguous, same device)
    give [B, N] float32 scores. Raises ``ValueError`` naming the offending argument.
    """
    _check_inputs(q_last, keys, scale)
    b, hq, d = q_last.shape
    hkv, n = keys.shape[1], keys.shape[2]
    dev = q_last.device
    if b == 0 or n == 0 or hq == 0:
        return torch.zeros(b, n, device=dev, dtype=torch.float32)

    g = hq // hkv
    meta = kernel_meta(q_last.dtype, d, g, _interpreted())
    block_n = meta["BLOCK_N"]
    num_blocks = triton.cdiv(n, block_n)
    logits = torch.empty(b, hq, n, device=dev, dtype=torch.float32)
    block_max = torch.empty(b, hq, num_blocks, device=dev, dtype=torch.float32)
    block_sum = torch.empty_like(block_max)
    _score_blocks[(num_blocks, b * hkv)](
        q_last,
        keys,
        logits,
        block_max,
        block_sum,
        float(scale) * _LOG2E,
        n,
        hkv,
        g,
        num_blocks,
        *q_last.stride()[:2],
        *keys.stride()[:3],
        **meta,
    )
    head_max = torch.empty(b, hq, device=dev, dtype=torch.float32)
    head_sum = torch.empty_like(head_max)
    _head_stats[(b * hq,)](block_max, block_sum, head_max, head_sum, num_blocks, BLOCK=256)
    out = torch.empty(b, n, device=dev, dtype=torch.float32)
    _sum_heads[(triton.cdiv(n, 256), b)](logits, head_max, head_sum, out, n, hq, BLOCK_N=256)
    return out
