"""ctypes bindings of decode.c (built and loaded by :mod:`kernels.cpu.build`)."""

from __future__ import annotations

import ctypes

import torch

from .build import ISAS
from .layouts import DecodeStep, Q4Weight

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class CpuKernels:
    """The compiled kernels; every tensor argument is a contiguous CPU tensor."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.sep_isa.restype = _I
        lib.sep_q4_matvec.argtypes = [_P, _P, _P, _P, _I, _I, _P, _P, _I]
        lib.sep_int8_matvec.argtypes = [_P, _P, _P, _P, _P, _I, _I, _P, _P, _I]
        lib.sep_block_matmul.argtypes = [_I, _P, _P, _I, _I, _P, _I, _P, _I]
        lib.sep_block_type.argtypes = [_I, _P, _P]
        lib.sep_block_dequant.argtypes = [_I, _P, _I, _I, _P, _I]
        lib.sep_step_kinds_ok.argtypes = [_I, _P]
        lib.sep_step_kinds_ok.restype = _I
        lib.sep_decode_layers.argtypes = [
            _I, _P, _I, _I, _I, _I, _I, _I, _F, _F,  # shape, eps, scale
            _P, _P, _P, _P, _I, _P, _I, _I, _I, _P, _P, _I,  # state, ring, positions, threads
        ]  # fmt: skip
        self.isa = ISAS[lib.sep_isa()]  # which of decode.c's paths this build has

    def block_type(self, c_type: int) -> tuple[int, int]:
        """(weights, bytes) per block of a format in blocks.h; (0, 0) if it has none."""
        w, b = ctypes.c_int(), ctypes.c_int()
        self.lib.sep_block_type(c_type, ctypes.byref(w), ctypes.byref(b))
        return w.value, b.value

    def q4_matvec(self, x: torch.Tensor, w: Q4Weight, threads: int) -> torch.Tensor:
        """x [in] fp32 -> y [out] fp32 = W x (+ bias), activations quantised per group of 32."""
        x = x.reshape(-1).float().contiguous()
        y = torch.empty(w.out_features)
        self.lib.sep_q4_matvec(
            _ptr(w.codes), _ptr(w.step), _ptr(w.min), _ptr(w.bias),
            w.out_features, w.in_features, _ptr(x), _ptr(y), threads,
        )  # fmt: skip
        return y

    def int8_matvec(
        self, x, weight, row_sums, scale, inv_smooth, bias, threads: int
    ) -> torch.Tensor:
        """The int8 layer of :class:`sepcli.quant.Int8Linear` for one token: x [in] fp32 ->
        [out] fp32, the same numbers as its torch path (int32 sums are exact)."""
        x = x.reshape(-1).float().contiguous()
        out, n_in = weight.shape
        y = torch.empty(out)
        self.lib.sep_int8_matvec(
            _ptr(weight), _ptr(row_sums), _ptr(scale), _ptr(inv_smooth), _ptr(bias),
            out, n_in, _ptr(x), _ptr(y), threads,
        )  # fmt: skip
        return y

    def block_matmul(self, x: torch.Tensor, w, bias, threads: int) -> torch.Tensor:
        """x [T, cols] fp32 -> [T, rows] for a :class:`kernels.quant.BlockTensor` of a format
        with C kernels: activations quantised per group of 32, integer dot products on the
        blocks as stored (T = 1: the matrix-vector product; else the blocked GEMM)."""
        x = x.float().contiguous()
        data = w.data if w.data.is_contiguous() else w.data.contiguous()
        b = None if bias is None else bias.float().contiguous()
        y = torch.empty(x.shape[0], w.rows)
        self.lib.sep_block_matmul(
            w.format.c_type, _ptr(data), _ptr(b), w.rows, w.cols, _ptr(x), x.shape[0], _ptr(y),
            threads,
        )  # fmt: skip
        return y

    def block_dequant(self, w, threads: int) -> torch.Tensor:
        """A :class:`kernels.quant.BlockTensor` of a format with C kernels -> fp32 [rows, cols]
        (the same numbers as :func:`kernels.quant.dequantize`, up to fp32 rounding)."""
        data = w.data if w.data.is_contiguous() else w.data.contiguous()
        out = torch.empty(w.rows, w.cols)
        self.lib.sep_block_dequant(w.format.c_type, _ptr(data), w.rows, w.cols, _ptr(out), threads)
        return out

    def decode_layers(self, step: DecodeStep, h, k_ring, v_ring, k_rot, slot_pos, slot: int,
                      q_pos: int, rerotate: bool, cos, sin, threads: int) -> None:  # fmt: skip
        """Run ``step``'s layers on h [hidden] (in place) for one token; see decode.c."""
        s = step
        if not self.lib.sep_step_kinds_ok(s.layers, _ptr(s.table)):
            raise ValueError("the decode step holds a weight kind this build does not know")
        self.lib.sep_decode_layers(
            s.layers, _ptr(s.table), s.hidden, s.q_heads, s.kv_heads, s.head_dim, s.inter,
            s.rot, s.eps, s.scale, _ptr(h), _ptr(k_ring), _ptr(v_ring), _ptr(k_rot),
            k_ring.shape[-2], _ptr(slot_pos), slot, q_pos, int(rerotate), _ptr(cos), _ptr(sin),
            threads,
        )  # fmt: skip
