"""kernels.quant: each block format's pure-torch reference against the gguf package's own
dequantize (an implementation nobody here wrote), and the reference matmul against a plain
product in fp64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

import sepcli.kernels.quant as kq

SEED = 11
QUANTIZED = sorted(kq.QUANTIZED)


def gguf_reference(w: kq.BlockTensor) -> torch.Tensor:
    return torch.from_numpy(
        gguf_dequantize(w.data.numpy(), GGMLQuantizationType[w.qtype]).copy()
    ).reshape(w.rows, w.cols)


def set_halves(w: kq.BlockTensor, value: float) -> None:
    """Every fp16 field of every block of w to ``value``."""
    fmt = w.format
    raw = w.data.view(-1, fmt.nbytes)
    for at in fmt.halves:
        raw[:, at : at + 2] = torch.tensor([value]).half().view(torch.uint8)


@pytest.mark.parametrize("qtype", QUANTIZED)
def test_reference_equals_gguf_dequantize(qtype):
    print(f"seed {SEED}")
    gen = torch.Generator().manual_seed(SEED)
    fmt = kq.format_of(qtype)
    w = kq.random_blocks(qtype, 37, 3 * max(fmt.weights, 256), gen)
    got = kq.dequantize(w)
    assert got.shape == (37, w.cols) and got.dtype == torch.float32
    assert torch.equal(got, gguf_reference(w))
    # the zero block: all weights 0
    w.data[5] = 0
    assert torch.equal(kq.dequantize(w, slice(5, 6)), torch.zeros(1, w.cols))
    # extreme scales: the largest fp16 and the smallest subnormal, negative too
    for value in (65504.0, -65504.0, 2.0**-24):
        set_halves(w, value)
        assert torch.equal(kq.dequantize(w), gguf_reference(w)), value


@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_float_types_are_casts(qtype):
    gen = torch.Generator().manual_seed(SEED)
    w = kq.random_blocks(qtype, 5, 7, gen)
    assert torch.equal(kq.dequantize(w), w.data.float())
    if qtype != "BF16":  # the gguf package reads BF16 as raw bytes
        ref = gguf_dequantize(w.data.numpy(), GGMLQuantizationType[qtype])
        assert torch.equal(kq.dequantize(w), torch.from_numpy(np.asarray(ref, np.float32)))


def test_row_selection():
    gen = torch.Generator().manual_seed(SEED)
    w = kq.random_blocks("Q6_K", 9, 512, gen)
    full = kq.dequantize(w)
    ids = torch.tensor([3, 0, 3, 8])
    assert torch.equal(kq.dequantize(w, ids), full[ids])
    assert torch.equal(kq.dequantize(w, slice(2, 5)), full[2:5])
    assert torch.equal(kq.dequantize(w, torch.tensor(4)), full[4:5])


@pytest.mark.parametrize("qtype", QUANTIZED + ["F16"])
def test_reference_matmul(monkeypatch, qtype):
    print(f"seed {SEED}")
    gen = torch.Generator().manual_seed(SEED)
    monkeypatch.setattr(kq, "ROW_BLOCK_BYTES", 4096)  # several row blocks, a ragged last one
    w = kq.random_blocks(qtype, 63, 512, gen)
    x, bias = torch.randn(3, 512, generator=gen), torch.randn(63, generator=gen)
    y = kq.reference_matmul(x, w, bias)
    exact = (x.double() @ kq.dequantize(w).double().T + bias.double()).float()
    assert torch.allclose(y, exact, rtol=1e-5, atol=1e-5 * exact.abs().max().item())


def test_block_tensor_validates():
    good = torch.zeros(4, 2 * 144, dtype=torch.uint8)
    kq.BlockTensor("Q4_K", good, 4, 512)
    with pytest.raises(ValueError, match="IQ2_XS"):
        kq.BlockTensor("IQ2_XS", good, 4, 512)
    with pytest.raises(ValueError, match="multiple of 256"):
        kq.BlockTensor("Q4_K", good, 4, 500)
    with pytest.raises(ValueError, match="uint8"):
        kq.BlockTensor("Q4_K", good[:3], 4, 512)
    with pytest.raises(ValueError, match="float16"):
        kq.BlockTensor("F16", torch.zeros(4, 8), 4, 8)
    assert kq.nbytes(kq.BlockTensor("Q4_K", good, 4, 512)) == 4 * 288


def test_from_gguf_shares_the_file(tmp_path):
    """A GGUF written by the gguf package's writer: its tensors come back as BlockTensors
    over the file's memory map, the same numbers as gguf's own dequantize."""
    import gguf

    gen = torch.Generator().manual_seed(SEED)
    path = tmp_path / "t.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    weights = {}
    for qtype in ("Q4_K", "Q8_0", "F16", "BF16", "F32"):
        w = kq.random_blocks(qtype, 6, 256, gen)
        weights[qtype] = w
        raw = w.data.view(torch.uint8).numpy() if qtype == "BF16" else w.data.numpy()
        writer.add_tensor(qtype, raw, raw_dtype=GGMLQuantizationType[qtype])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(path))
    for t in reader.tensors:
        b = kq.from_gguf(t)
        assert (b.qtype, b.rows, b.cols) == (t.name, 6, 256)
        assert torch.equal(kq.dequantize(b), kq.dequantize(weights[t.name]))
        assert b.data.data_ptr() == t.data.ctypes.data  # no copy
