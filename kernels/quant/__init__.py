"""Weights kept in a GGUF file's own block formats, and the products on them.

One module per format (:mod:`.q4_0`, :mod:`.q4_1`, :mod:`.q5_0`, :mod:`.q5_1`, :mod:`.q8_0`,
:mod:`.q4_k`, :mod:`.q5_k`, :mod:`.q6_k`, :mod:`.float`) holds its layout and its pure-torch
reference dequantisation; this module holds the tensor type, :class:`BlockTensor`, and the
entry points every caller uses: :func:`dequantize` (the reference), :func:`dense` (a whole
weight dequantised, by the C kernels where built), :func:`matmul` (the C
kernels of :mod:`kernels.cpu` where they are built, else the reference a block of rows at a
time) and :func:`kernel_name`.

A new format: a module beside these with its ``FORMAT`` (and its C kernels in kernels/cpu), then
one line in ``_FORMATS`` below.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from . import float as _float
from . import q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0
from .layout import Format

_FORMATS: dict[str, Format] = {
    m.FORMAT.name: m.FORMAT for m in (q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k)
} | _float.FORMATS
SUPPORTED: frozenset[str] = frozenset(_FORMATS)
QUANTIZED: frozenset[str] = frozenset(n for n, f in _FORMATS.items() if f.quantized)
ROW_BLOCK_BYTES = 1 << 20  # the reference matmul dequantises about this many bytes of rows


def format_of(qtype: str) -> Format:
    """The :class:`~kernels.quant.layout.Format` called ``qtype``; ValueError if unknown."""
    try:
        return _FORMATS[qtype]
    except KeyError:
        raise ValueError(
            f"unsupported weight type {qtype!r}; supported: {', '.join(sorted(SUPPORTED))}"
        ) from None


@dataclass(frozen=True)
class BlockTensor:
    """A 2-D weight [rows = out_features, cols = in_features] in its file's format.

    qtype : a ``gguf.GGMLQuantizationType`` name ("Q4_K", "F16", ...).
    data  : quantized types: uint8 [rows, row_bytes] exactly as stored (maybe a view of the
            file's memory map); float types: the typed tensor [rows, cols].
    """

    qtype: str
    data: torch.Tensor
    rows: int
    cols: int

    def __post_init__(self):
        fmt = format_of(self.qtype)
        if self.rows <= 0 or self.cols <= 0:
            raise ValueError(f"a BlockTensor needs rows, cols > 0, got {self.rows} x {self.cols}")
        if self.cols % fmt.weights:
            raise ValueError(
                f"{self.qtype} needs cols a multiple of {fmt.weights}, got {self.cols}"
            )
        if fmt.quantized:
            want, dtype = (self.rows, self.cols // fmt.weights * fmt.nbytes), torch.uint8
        else:
            want, dtype = (self.rows, self.cols), _float.DTYPES[self.qtype]
        if tuple(self.data.shape) != want or self.data.dtype != dtype:
            raise ValueError(
                f"{self.qtype} data of a {self.rows} x {self.cols} weight must be {dtype} "
                f"{list(want)}, got {self.data.dtype} {list(self.data.shape)}"
            )

    @property
    def format(self) -> Format:
        return _FORMATS[self.qtype]

    @property
    def blocks_per_row(self) -> int:
        return self.cols // self.format.weights


def from_gguf(tensor) -> BlockTensor:
    """A 2-D ``gguf.ReaderTensor`` -> BlockTensor sharing its memory (no copy)."""
    qtype = tensor.tensor_type.name
    shape = [int(s) for s in tensor.shape]
    if len(shape) != 2:
        raise ValueError(f"tensor {tensor.name!r} is {len(shape)}-D, a weight needs 2")
    cols, rows = shape
    format_of(qtype)
    with warnings.catch_warnings():  # a read-only memory map: torch warns and shares it
        warnings.simplefilter("ignore", UserWarning)
        data = torch.from_numpy(np.asarray(tensor.data))
    if qtype == "BF16":  # the reader hands BF16 out as bytes
        data = data.reshape(rows, -1).view(torch.bfloat16)
    elif qtype in QUANTIZED:
        data = data.reshape(rows, -1)
    return BlockTensor(qtype, data.reshape(rows, -1), rows, cols)


def dequantize(w: BlockTensor, rows=None) -> torch.Tensor:
    """fp32 [n, cols] of the rows ``rows``: None (all), a slice, or a LongTensor of row ids
    (an embedding lookup). The reference every kernel is checked against."""
    data = w.data if rows is None else w.data[rows]
    if data.dim() == 1:
        data = data[None]
    fmt = w.format
    if not fmt.quantized:
        return data.float()
    n = data.shape[0]
    blocks = data.reshape(n * w.blocks_per_row, fmt.nbytes)
    return fmt.dequantize(blocks).reshape(n, w.cols)


def reference_matmul(x: torch.Tensor, w: BlockTensor, bias: torch.Tensor | None = None):
    """x [T, cols] fp32 -> [T, rows]: x @ dequantize(w).T, about ROW_BLOCK_BYTES of weight
    rows dequantised at a time (never an fp32 copy of the whole weight)."""
    x = x.float()
    step = max(1, ROW_BLOCK_BYTES // (4 * w.cols))
    y = torch.empty(x.shape[0], w.rows)
    for r in range(0, w.rows, step):
        part = slice(r, min(r + step, w.rows))
        torch.matmul(x, dequantize(w, part).T, out=y[:, part])
    return y if bias is None else y + bias


def matmul(x: torch.Tensor, w: BlockTensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, cols] fp32 -> [T, rows] fp32 (+ bias), with torch.get_num_threads() threads: the C
    kernels where they are built (one token: a matrix-vector product; more: a blocked GEMM on
    activations quantised per block), else :func:`reference_matmul`."""
    from . import kernels as _kernels

    return _kernels.matmul(x, w, bias)


def dense(w: BlockTensor) -> torch.Tensor:
    """fp32 [rows, cols]: the whole weight dequantised, by the C kernels where they are built
    (a dense copy for the int8 and fp32 loads of a GGUF; the block path never makes one), else
    by :func:`dequantize`."""
    from . import kernels as _kernels

    return _kernels.dense(w)


def kernel_name(w: BlockTensor) -> str:
    """What :func:`matmul` runs on for ``w`` (for ``sepcli info``)."""
    from . import kernels as _kernels

    return _kernels.name(w)


def nbytes(w: BlockTensor) -> int:
    """Bytes the weight holds."""
    return w.data.numel() * w.data.element_size()


def random_blocks(qtype: str, rows: int, cols: int, gen: torch.Generator, scale: float = 0.02):
    """A random BlockTensor with valid scales (for tests and benches): random code bytes, every
    fp16 field set to ``scale`` times a uniform number in [0.5, 1.5), with random signs where
    the format allows one (Q4_0, Q5_0, Q8_0, Q6_K scales multiply signed codes anyway)."""
    fmt = format_of(qtype)
    if not fmt.quantized:
        data = (torch.randn(rows, cols, generator=gen) * scale).to(_float.DTYPES[qtype])
        return BlockTensor(qtype, data, rows, cols)
    n = rows * (cols // fmt.weights)
    raw = torch.randint(0, 256, (n, fmt.nbytes), generator=gen, dtype=torch.uint8)
    for at in fmt.halves:
        v = (torch.rand(n, generator=gen) + 0.5) * scale
        raw[:, at : at + 2] = v.half().view(torch.uint8).reshape(n, 2)
    return BlockTensor(qtype, raw.reshape(rows, -1), rows, cols)
