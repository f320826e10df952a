"""The weight layouts the C kernels read: decode.c's 4-bit pair layout (:class:`Q4Weight`,
:func:`pack_q4`) and the decode step's table of every layer's tensors (:class:`DecodeStep`),
whose projections are Q4 weights or GGUF blocks (:class:`kernels.quant.BlockTensor`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32  # inputs per 4-bit step and min: a GGUF Q4_1 block
PTRS_PER_PROJ = 5  # decode.c: kind, p0, p1, p2, bias
PTRS_PER_LAYER = 2 + 7 * PTRS_PER_PROJ  # decode.c: ln1, ln2, then the 7 projections
KIND_Q4 = -1  # decode.c's kind of a Q4Weight; block formats: Format.c_type


@dataclass(frozen=True)
class Q4Weight:
    """A 4-bit weight [out, in] in decode.c's layout (:func:`pack_q4`).

    codes : [out, in/2] uint8; step, min : [out, in/32] fp16; bias : [out] fp32 or None.
    """

    codes: torch.Tensor
    step: torch.Tensor
    min: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1] * 2


def q4_layout_fits(out_features: int, in_features: int) -> bool:
    """decode.c reads the groups of a row in pairs: in_features a multiple of 64."""
    return out_features > 0 and in_features % (2 * GROUP) == 0


def pack_q4(codes: torch.Tensor, step: torch.Tensor, low: torch.Tensor, bias=None) -> Q4Weight:
    """codes [out, in] (0..15), step and low [out, in/32]: w = low + code * step per group ->
    decode.c's layout: groups in pairs, byte j of a pair holding code j of the first group in
    its low nibble and code j of the second in its high one; step and low in fp16."""
    out, n_in = codes.shape
    if not q4_layout_fits(out, n_in):
        raise ValueError(f"a 4-bit weight needs in_features % 64 == 0, got {n_in}")
    pairs = codes.to(torch.uint8).reshape(out, n_in // (2 * GROUP), 2, GROUP)
    packed = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(out, n_in // 2).contiguous()
    return Q4Weight(
        packed,
        step.to(torch.float16).contiguous(),
        low.to(torch.float16).contiguous(),
        None if bias is None else bias.float().contiguous(),
    )


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def step_kind(w) -> int | None:
    """decode.c's kind of a projection's weight: a Q4Weight, or a BlockTensor of a format with
    C kernels (``(BlockTensor, bias)``); None if the step cannot take it."""
    if isinstance(w, Q4Weight):
        return KIND_Q4
    blocks = w[0]
    kind = blocks.format.c_type
    return kind if kind >= 0 and blocks.data.is_contiguous() else None


@dataclass(frozen=True)
class DecodeStep:
    """A model's layers as decode.c reads them: every layer's entries in ``table``
    ([layers * PTRS_PER_LAYER] int64), and ``keep``, the tensors, so they outlive the table."""

    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    inter: int
    rot: int
    eps: float
    scale: float
    table: torch.Tensor
    keep: tuple

    @classmethod
    def build(cls, layers: list[dict], **shape) -> DecodeStep:
        """layers: per layer ``ln1``, ``ln2`` (fp32) and ``q, k, v, o, gate, up, down``, each a
        :class:`Q4Weight` or ``(BlockTensor, bias or None)`` (:func:`step_kind` not None)."""
        ptrs, keep = [], []
        for layer in layers:
            norms = [layer["ln1"].float().contiguous(), layer["ln2"].float().contiguous()]
            keep += norms
            ptrs += [_ptr(n) for n in norms]
            for name in ("q", "k", "v", "o", "gate", "up", "down"):
                w = layer[name]
                kind = step_kind(w)
                if kind is None:
                    raise ValueError(f"the C step cannot take the {name} projection")
                if kind == KIND_Q4:
                    keep.append(w)
                    ptrs += [kind, _ptr(w.codes), _ptr(w.step), _ptr(w.min), _ptr(w.bias)]
                else:
                    blocks, bias = w
                    bias = None if bias is None else bias.float().contiguous()
                    keep += [blocks, bias]
                    ptrs += [kind, _ptr(blocks.data), 0, 0, _ptr(bias)]
        table = torch.tensor(ptrs, dtype=torch.int64)
        return cls(len(layers), table=table, keep=tuple(keep), **shape)
