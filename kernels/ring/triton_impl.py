"""Ring-buffer attention in Triton: RoPE applied to pre-RoPE keys on the fly, GQA, online softmax.

Same contract as :func:`kernels.ring.reference.ring_attention_reference`; the torch
reference is the spec and the CPU path, this is the CUDA path (and runs on CPU tensors under
``TRITON_INTERPRET=1``, which is how the tests exercise it without a GPU).

Layout of the work
------------------
One program owns a block of ``BLOCK_M`` query *rows* of one (batch, kv head): the G = Hq / Hkv
query heads that share a kv head are packed with the C queries into ``G * C`` rows, so a decode
step (C = 1) still fills an MMA tile and every key block is read once per kv head, not once per
query head. Keys are split in halves ``[0, R/2)``, ``[R/2, R)`` and the pass-through tail
``[R, D)`` (partial rotary), so the rotation ``x1 * cos - x2 * sin, x2 * cos + x1 * sin`` needs no
gather and each key byte is loaded exactly once; the score is the sum of three dot products.

cos/sin are computed in the kernel from the positions (the reference's fp32 angle, reduced to
[-pi, pi], then the GPU's fast sin/cos), so a call is one launch (two with key splits) and
reads nothing but q, the slots and their positions; a precomputed table would cost a handful
of extra torch launches per call, which at decode sizes take longer than the kernel.

For few programs and a long cache (decoding) the slots are split across a third grid axis
(flash-decoding): each split writes an unnormalised partial output with its running max and
sum-exp, and a second kernel combines the splits.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .. import checks

_LOG2E = 1.4426950408889634
_MAX_HEAD_DIM = 256


@triton.jit
def _as_operand(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """Round an fp32 tile to the input dtype (as the reference does before SDPA). The CPU
    interpreter has no bf16 arithmetic and truncates on fp32 -> bf16, so there the value is
    rounded to nearest-even by hand (as the GPU's cvt.rn does) and carried in fp32."""
    if INTERPRET:
        if DTYPE == tl.bfloat16:
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            y = bits.to(tl.float32, bitcast=True)
        else:
            y = x.to(DTYPE).to(tl.float32)
    else:
        y = x.to(DTYPE)
    return y


@triton.jit
def _dot(a, b, FP32: tl.constexpr):
    """fp32 accumulation; true fp32 products (not tf32) for fp32 inputs, to match the reference."""
    if FP32:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _cos_sin(pos, inv_freq, rope_scale, INTERPRET: tl.constexpr):
    """cos, sin [N, HALF_P] fp32 (times rope_scale) for positions [N] and inv_freq [HALF_P].

    The angle is the reference's fp32 product pos * inv_freq. On the GPU it is reduced to
    [-pi, pi] by Cody-Waite with fused multiply-adds (2 pi split into three fp32 parts; exact
    for any position this engine meets), then fed to the fast sin/cos units (abs error < 1e-6
    there); libdevice's exact versions cost ~2x the registers and spill in this kernel. The
    interpreter evaluates numpy's exact cos/sin directly."""
    angle = pos.to(tl.float32)[:, None] * inv_freq[None, :]
    if INTERPRET:
        cos = tl.cos(angle)
        sin = tl.sin(angle)
    else:
        turns = tl.floor(angle * 0.15915494309189535 + 0.5)
        r = tl.fma(-turns, 6.2831854820251465, angle)
        r = tl.fma(-turns, -1.7484555314695172e-07, r)
        r = tl.fma(-turns, -6.8604980400235275e-15, r)
        cos = tl.inline_asm_elementwise(
            "cos.approx.f32 $0, $1;", "=r,r", [r], dtype=tl.float32, is_pure=True, pack=1
        )
        sin = tl.inline_asm_elementwise(
            "sin.approx.f32 $0, $1;", "=r,r", [r], dtype=tl.float32, is_pure=True, pack=1
        )
    return cos * rope_scale, sin * rope_scale


@triton.jit
def _ring_attention_fwd(
    Q,
    K,
    V,
    SLOT_POS,
    Q_POS,
    INV_FREQ,  # inputs; INV_FREQ: [HALF] fp32
    OUT,
    O_PART,
    M_PART,
    L_PART,  # output [B, Hq, C, D]; split workspace (unused if not SPLIT)
    qk_scale,  # softmax scale * log2(e): the kernel works in base 2
    rope_scale,
    S,
    C,
    ROWS,
    HKV,
    NUM_SPLITS,
    keys_per_split,
    stride_qb,
    stride_qh,
    stride_qc,  # q, k, v strides (the head dim is contiguous)
    stride_kb,
    stride_kh,
    stride_ks,
    stride_vb,
    stride_vh,
    stride_vs,
    D: tl.constexpr,
    HALF: tl.constexpr,
    PASS: tl.constexpr,
    D_P: tl.constexpr,
    HALF_P: tl.constexpr,
    PASS_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
    FP32: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)  # b * HKV + kv head
    pid_s = tl.program_id(2)
    DTYPE = Q.dtype.element_ty
    R = 2 * HALF

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # row = g * C + c
    row_ok = rows < ROWS
    dh = tl.arange(0, HALF_P)
    dh_ok = dh < HALF
    dp = tl.arange(0, PASS_P)
    dp_ok = dp < PASS
    dv = tl.arange(0, D_P)
    dv_ok = dv < D

    b = pid_bh // HKV
    h = pid_bh % HKV
    # Row g * C + c is query c of q head h * G + g (the G heads that share kv head h).
    q_idx = rows % C
    q_head = h * (ROWS // C) + rows // C
    q_row = Q + b * stride_qb + q_head[:, None] * stride_qh + q_idx[:, None] * stride_qc
    qm = row_ok[:, None]
    q_pos = tl.load(Q_POS + q_idx, mask=row_ok, other=-1)
    inv_freq = tl.load(INV_FREQ + dh, mask=dh_ok, other=0.0)
    qc, qs = _cos_sin(q_pos, inv_freq, rope_scale, INTERPRET)  # (BLOCK_M, HALF_P)
    q1 = tl.load(q_row + dh[None, :], mask=qm & dh_ok[None, :], other=0.0).to(tl.float32)
    q2 = tl.load(q_row + HALF + dh[None, :], mask=qm & dh_ok[None, :], other=0.0).to(tl.float32)
    q1r = _as_operand(q1 * qc - q2 * qs, DTYPE, INTERPRET)  # (BLOCK_M, HALF_P)
    q2r = _as_operand(q2 * qc + q1 * qs, DTYPE, INTERPRET)
    if PASS > 0:
        qp = tl.load(q_row + R + dp[None, :], mask=qm & dp_ok[None, :], other=0.0)
        qp = _as_operand(qp.to(tl.float32), DTYPE, INTERPRET)  # (BLOCK_M, PASS_P)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_P], tl.float32)

    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    start = pid_s * keys_per_split
    end = tl.minimum(start + keys_per_split, S)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        k_pos = tl.load(SLOT_POS + n, mask=n < end, other=-1)
        valid = k_pos >= 0  # empty/evicted slots are never read
        km = valid[:, None]
        kc, ks = _cos_sin(k_pos, inv_freq, rope_scale, INTERPRET)  # (BLOCK_N, HALF_P)
        k_row = k_base + n[:, None] * stride_ks
        k1 = tl.load(k_row + dh[None, :], mask=km & dh_ok[None, :], other=0.0).to(tl.float32)
        k2 = tl.load(k_row + HALF + dh[None, :], mask=km & dh_ok[None, :], other=0.0).to(tl.float32)
        k1r = _as_operand(k1 * kc - k2 * ks, DTYPE, INTERPRET)  # (BLOCK_N, HALF_P)
        k2r = _as_operand(k2 * kc + k1 * ks, DTYPE, INTERPRET)
        s = _dot(q1r, tl.trans(k1r), FP32) + _dot(q2r, tl.trans(k2r), FP32)  # (BLOCK_M, BLOCK_N)
        if PASS > 0:
            kp = tl.load(k_row + R + dp[None, :], mask=km & dp_ok[None, :], other=0.0)
            kp = _as_operand(kp.to(tl.float32), DTYPE, INTERPRET)
            s += _dot(qp, tl.trans(kp), FP32)

        visible = valid[None, :] & (k_pos[None, :] <= q_pos[:, None])
        s = tl.where(visible, s * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows that saw nothing yet
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(s - m_safe[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(
            v_base + n[:, None] * stride_vs + dv[None, :], mask=km & dv_ok[None, :], other=0.0
        )
        v = _as_operand(v.to(tl.float32), DTYPE, INTERPRET)  # (BLOCK_N, D_P)
        acc = acc * alpha[:, None] + _dot(_as_operand(p, DTYPE, INTERPRET), v, FP32)
        m_i = m_new

    if SPLIT:
        part = (
            pid_bh * NUM_SPLITS + pid_s
        ) * ROWS + rows  # (BLOCK_M,) rows of [B*Hkv, splits, ROWS]
        tl.store(M_PART + part, m_i, mask=row_ok)
        tl.store(L_PART + part, l_i, mask=row_ok)
        tl.store(O_PART + part[:, None] * D_P + dv[None, :], acc, mask=qm)
    else:
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # a row that saw nothing stays 0
        out = _as_operand(out, OUT.dtype.element_ty, INTERPRET).to(OUT.dtype.element_ty)
        tl.store(
            OUT + pid_bh * ROWS * D + rows[:, None] * D + dv[None, :], out, mask=qm & dv_ok[None, :]
        )


@triton.jit
def _combine_splits(
    O_PART,
    M_PART,
    L_PART,
    OUT,
    ROWS,
    NUM_SPLITS,
    D: tl.constexpr,
    D_P: tl.constexpr,
    BLOCK_M: tl.constexpr,
    INTERPRET: tl.constexpr,
):
    """out = sum_s 2^(m_s - m) acc_s / sum_s 2^(m_s - m) l_s over the key splits of each row."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < ROWS
    dv = tl.arange(0, D_P)

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    for s in range(0, NUM_SPLITS):
        part = (pid_bh * NUM_SPLITS + s) * ROWS + rows
        m = tl.maximum(m, tl.load(M_PART + part, mask=row_ok, other=float("-inf")))
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    norm = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D_P], tl.float32)
    for s in range(0, NUM_SPLITS):
        part = (pid_bh * NUM_SPLITS + s) * ROWS + rows
        w = tl.exp2(tl.load(M_PART + part, mask=row_ok, other=float("-inf")) - m_safe)
        norm += w * tl.load(L_PART + part, mask=row_ok, other=0.0)
        o = tl.load(O_PART + part[:, None] * D_P + dv[None, :], mask=row_ok[:, None], other=0.0)
        acc += w[:, None] * o
    out = acc / tl.where(norm > 0.0, norm, 1.0)[:, None]
    out = _as_operand(out, OUT.dtype.element_ty, INTERPRET).to(OUT.dtype.element_ty)
    tl.store(
        OUT + pid_bh * ROWS * D + rows[:, None] * D + dv[None, :],
        out,
        mask=row_ok[:, None] & (dv < D)[None, :],
    )


def _interpreted() -> bool:
    """True when the kernels were built by Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _INTERPRETED


_INTERPRETED = not isinstance(_ring_attention_fwd, triton.runtime.JITFunction)


def _pow2(n: int, floor: int = 16) -> int:
    """Next power of two >= n, at least ``floor`` (tl.dot needs tiles of 16 or more)."""
    return max(floor, triton.next_power_of_2(max(n, 1)))


def _check_inputs(q, k_ring, v_ring, slot_pos, q_pos, inv_freq, scale) -> None:
    checks.require_tensors(
        {
            "q": q,
            "k_ring": k_ring,
            "v_ring": v_ring,
            "slot_pos": slot_pos,
            "q_pos": q_pos,
            "inv_freq": inv_freq,
        }
    )
    if q.dim() != 4:
        raise ValueError(f"q must be [B, Hq, C, D], got shape {tuple(q.shape)}")
    if k_ring.dim() != 4:
        raise ValueError(f"k_ring must be [B, Hkv, S, D], got shape {tuple(k_ring.shape)}")
    if v_ring.shape != k_ring.shape:
        raise ValueError(
            f"v_ring shape {tuple(v_ring.shape)} != k_ring shape {tuple(k_ring.shape)}"
        )
    b, hq, c, d = q.shape
    kb, hkv, s, kd = k_ring.shape
    if kb != b or kd != d:
        raise ValueError(
            f"k_ring shape {tuple(k_ring.shape)} does not match q shape {tuple(q.shape)} "
            "in batch or head dim"
        )
    checks.require_heads(hq, hkv, d, _MAX_HEAD_DIM)
    if slot_pos.shape != (s,):
        raise ValueError(f"slot_pos must be [S] = [{s}], got shape {tuple(slot_pos.shape)}")
    if q_pos.shape != (c,):
        raise ValueError(f"q_pos must be [C] = [{c}], got shape {tuple(q_pos.shape)}")
    for name, t in (("slot_pos", slot_pos), ("q_pos", q_pos)):
        if t.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"{name} must be int64 or int32, got {t.dtype}")
    if inv_freq.dim() != 1 or not inv_freq.is_floating_point():
        raise ValueError(
            f"inv_freq must be a 1-D float tensor, got {inv_freq.dtype} "
            f"shape {tuple(inv_freq.shape)}"
        )
    if not 1 <= 2 * inv_freq.numel() <= d:
        raise ValueError(f"rotary dims 2 * {inv_freq.numel()} must be in 2..{d} (head dim)")
    checks.require_operands(
        "q",
        {"q": q, "k_ring": k_ring, "v_ring": v_ring},
        {"slot_pos": slot_pos, "q_pos": q_pos, "inv_freq": inv_freq},
        _interpreted(),
    )
    checks.require_scale(scale)


def kernel_meta(dtype: torch.dtype, d: int, half: int, rows: int, interpret: bool) -> dict:
    """Compile-time parameters of ``_ring_attention_fwd`` (all but SPLIT) and its launch options.

    Tiles checked spill-free on sm_90 with ``bench/kernel_speed.py --compile-only``: the rotation
    holds four [BLOCK_N, R/2] fp32 tiles per key block, hence 8 warps; fp32 inputs (a
    debugging path, ieee dots) need BLOCK_M 16.
    """
    fp32 = dtype == torch.float32
    return dict(
        D=d,
        HALF=half,
        PASS=d - 2 * half,
        D_P=_pow2(d),
        HALF_P=_pow2(half),
        PASS_P=_pow2(d - 2 * half),
        BLOCK_M=min(16 if fp32 else 64, _pow2(rows)),
        BLOCK_N=32 if interpret else 64,
        FP32=fp32,
        INTERPRET=interpret,
        num_warps=8,
        num_stages=2,
    )


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _num_splits(programs: int, key_blocks: int, device: torch.device) -> int:
    """Enough key splits to give every SM ~2 programs, each split keeping >= 2 key blocks."""
    if device.type != "cuda":
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    want = triton.cdiv(2 * sms, programs)
    return max(1, min(want, key_blocks // 2))


def ring_attention_triton(
    q: torch.Tensor,
    k_ring: torch.Tensor,
    v_ring: torch.Tensor,
    slot_pos: torch.Tensor,
    q_pos: torch.Tensor,
    inv_freq: torch.Tensor,
    scale: float,
    rope_scale: float = 1.0,
    *,
    num_splits: int | None = None,
) -> torch.Tensor:
    """Triton ring attention; arguments and result as in ``ring_attention_reference``.

    ``num_splits`` forces the number of key splits (flash-decoding); by default it is chosen
    from the GPU's SM count when there are too few (batch, kv head, row block) programs.
    Raises ``ValueError`` naming the offending argument on bad shapes, dtypes or devices.
    """
    _check_inputs(q, k_ring, v_ring, slot_pos, q_pos, inv_freq, scale)
    b, hq, c, d = q.shape
    hkv, s = k_ring.shape[1], k_ring.shape[2]
    if b == 0 or c == 0 or s == 0 or hq == 0:  # nothing to attend to: every query sees nothing
        return torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous, whatever q's strides

    half = inv_freq.numel()
    rows = (hq // hkv) * c  # (G * C) query rows per kv head
    inv_freq = inv_freq.to(torch.float32).contiguous()
    slot_pos = slot_pos.contiguous()
    q_pos = q_pos.contiguous()

    interpret = _interpreted()
    meta = kernel_meta(q.dtype, d, half, rows, interpret)
    block_m, block_n, d_p = meta["BLOCK_M"], meta["BLOCK_N"], meta["D_P"]
    row_blocks = triton.cdiv(rows, block_m)
    key_blocks = triton.cdiv(s, block_n)
    if num_splits is None:
        num_splits = _num_splits(row_blocks * b * hkv, key_blocks, q.device)
    elif not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {num_splits!r}")
    keys_per_split = triton.cdiv(key_blocks, min(num_splits, key_blocks)) * block_n
    num_splits = triton.cdiv(s, keys_per_split)
    split = num_splits > 1
    if split:
        o_part = torch.empty(b * hkv, num_splits, rows, d_p, device=q.device, dtype=torch.float32)
        m_part = torch.empty(b * hkv, num_splits, rows, device=q.device, dtype=torch.float32)
        l_part = torch.empty_like(m_part)
    else:
        o_part = m_part = l_part = out  # never touched when SPLIT is false
    _ring_attention_fwd[(row_blocks, b * hkv, num_splits)](
        q,
        k_ring,
        v_ring,
        slot_pos,
        q_pos,
        inv_freq,
        out,
        o_part,
        m_part,
        l_part,
        float(scale) * _LOG2E,
        float(rope_scale),
        s,
        c,
        rows,
        hkv,
        num_splits,
        keys_per_split,
        *q.stride()[:3],
        *k_ring.stride()[:3],
        *v_ring.stride()[:3],
        SPLIT=split,
        **meta,
    )
    if split:
        _combine_splits[(row_blocks, b * hkv)](
            o_part,
            m_part,
            l_part,
            out,
            rows,
            num_splits,
            D=d,
            D_P=d_p,
            BLOCK_M=block_m,
            INTERPRET=interpret,
        )
    return out
