"""The C products on GGUF blocks (kernels/cpu/blocks.h) against their references, for every
block format and every build (this machine's, AVX2, plain C): the matrix-vector product (one
token) and the blocked GEMM (several), on awkward shapes, a zero block and extreme scales."""

# ruff: noqa: F811  (the shared fixtures of tests/cpu_builds.py, imported)
from __future__ import annotations

import pytest
import torch

import sepcli.kernels.quant as kq
from sepcli.kernels.cpu.reference import block_matmul_reference
from tests.cpu_builds import BUILDS, builds, c_kernels_anywhere, kernels_for, native  # noqa: F401

SEED = 23
QUANTIZED = sorted(kq.QUANTIZED)
# (rows, cols in blocks): rows a multiple of nothing; one block, a few, and past one tile
SHAPES = [(37, 1), (63, 3), (37, 9)]
TOKENS = [1, 5, 40]  # one token (matrix-vector) and GEMMs below and past a token group (32)


def weight(qtype: str, rows: int, n_blocks: int, gen: torch.Generator) -> kq.BlockTensor:
    return kq.random_blocks(qtype, rows, n_blocks * kq.format_of(qtype).weights, gen)


def check(kern, w: kq.BlockTensor, x: torch.Tensor, bias) -> float:
    y = kern.block_matmul(x, w, bias, threads=1)
    ref = block_matmul_reference(x, w, bias)  # the same quantised activations, in fp64
    tol = 1e-5 * ref.abs().max().item() + 1e-30
    assert torch.allclose(y, ref, rtol=1e-4, atol=tol), (y - ref).abs().max()
    assert torch.equal(kern.block_matmul(x, w, bias, threads=2), y)  # threads split rows only
    exact = x.double() @ kq.dequantize(w).double().T + (0 if bias is None else bias.double())
    return ((y.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("qtype", QUANTIZED)
def test_block_products_match_their_reference(request, build, qtype):
    print(f"seed {SEED}")
    kern = kernels_for(request, build)
    fmt = kq.format_of(qtype)
    assert kern.block_type(fmt.c_type) == (fmt.weights, fmt.nbytes)  # C's table is ours
    gen = torch.Generator().manual_seed(SEED)
    for rows, n_blocks in SHAPES:
        w = weight(qtype, rows, n_blocks, gen)
        w.data[rows // 2, : fmt.nbytes] = 0  # a zero block
        bias = torch.randn(rows, generator=gen) if rows == 63 else None
        for t in TOKENS:
            x = torch.randn(t, w.cols, generator=gen)
            if w.cols > 32:
                x[0, :32] = 0  # a group of zeros quantises to zeros
            rel = check(kern, w, x, bias)
            print(build, qtype, rows, w.cols, t, "relative error vs fp32", rel)
            assert rel < 2e-2  # the activations' rounding to int8 per group of 32


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("qtype", QUANTIZED)
def test_extreme_scales(request, build, qtype):
    """The largest fp16 scales (and negative ones), and the smallest subnormal."""
    kern = kernels_for(request, build)
    gen = torch.Generator().manual_seed(SEED)
    fmt = kq.format_of(qtype)
    for value in (65504.0, -65504.0, 2.0**-24):
        w = weight(qtype, 37, 2, gen)
        raw = w.data.view(-1, fmt.nbytes)
        for at in fmt.halves:
            raw[:, at : at + 2] = torch.tensor([value]).half().view(torch.uint8)
        x = torch.randn(3, w.cols, generator=gen)
        check(kern, w, x, None)


def test_matmul_runs_the_c_kernels(native):
    gen = torch.Generator().manual_seed(SEED)
    w = kq.random_blocks("Q4_K", 37, 512, gen)
    assert kq.kernel_name(w) == f"C {native.isa} (Q4_K blocks)"
    x = torch.randn(2, 3, 512, generator=gen)  # leading dims are kept
    y = kq.matmul(x, w)
    assert y.shape == (2, 3, 37)
    assert torch.equal(y.reshape(6, 37), native.block_matmul(x.reshape(6, 512), w, None, 1))
    f16 = kq.random_blocks("F16", 5, 64, gen)
    assert "reference" in kq.kernel_name(f16)
    assert kq.kernel_name(kq.random_blocks("F32", 5, 64, gen)) == "torch fp32"


def test_matmul_falls_back_to_the_reference(monkeypatch):
    monkeypatch.setenv("SEPCLI_KERNELS", "reference")
    gen = torch.Generator().manual_seed(SEED)
    w = kq.random_blocks("Q6_K", 37, 512, gen)
    x = torch.randn(4, 512, generator=gen)
    assert "SEPCLI_KERNELS=reference" in kq.kernel_name(w)
    assert torch.equal(kq.matmul(x, w), kq.reference_matmul(x, w))


@pytest.mark.parametrize("build", BUILDS)
def test_dense_copy_matches_the_reference(request, build):
    """sep_block_dequant (the int8/fp32 loads of a GGUF) against the reference dequantisation,
    every format, a row count and block count that fill no tile."""
    kern = kernels_for(request, build)
    gen = torch.Generator().manual_seed(SEED)
    print(f"seed {SEED}")
    for qtype in QUANTIZED:
        w = weight(qtype, 37, 3, gen)
        ref = kq.dequantize(w)
        got = kern.block_dequant(w, threads=2)
        assert torch.allclose(got, ref, rtol=1e-6, atol=1e-6 * ref.abs().max().item()), qtype
