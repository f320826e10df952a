"""Layers whose weights stay in a GGUF file's own block format (:mod:`sepcli.kernels.quant`).

:class:`BlockLinear` is every projection of a model loaded with ``--dtype gguf``; its forward is
:func:`sepcli.kernels.quant.matmul` over the flattened tokens (fp32 in, fp32 out). :class:`BlockEmbedding`
is the token embedding: only the rows looked up are dequantised. A tied LM head is a
BlockLinear over the embedding's own :class:`~kernels.quant.BlockTensor` (no second copy).
"""

from __future__ import annotations

import torch
from torch import nn

from sepcli.kernels import quant
from sepcli.kernels.quant import BlockTensor


class BlockLinear(nn.Module):
    """A frozen linear layer on block weights: x [..., in] -> [..., out] fp32.

    weight_blocks : the weight [out, in] as stored in the file.
    bias : [out] fp32 or None.
    """

    def __init__(self, weight_blocks: BlockTensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.weight_blocks = weight_blocks
        self.in_features, self.out_features = weight_blocks.cols, weight_blocks.rows
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())
        self.tied = False  # True for an LM head over the embedding's blocks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).float()  # (tokens, in)
        y = quant.matmul(flat, self.weight_blocks, self.bias)  # (tokens, out)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        w = self.weight_blocks
        return f"in_features={w.cols}, out_features={w.rows}, {w.qtype}"


class BlockEmbedding(nn.Module):
    """Token embedding on block weights: ids [...] -> [..., dim] fp32, rows dequantised on lookup.

    weight_blocks : [vocab, dim] as stored in the file.
    """

    def __init__(self, weight_blocks: BlockTensor):
        super().__init__()
        self.weight_blocks = weight_blocks
        self.num_embeddings, self.embedding_dim = weight_blocks.rows, weight_blocks.cols

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = quant.dequantize(self.weight_blocks, ids.reshape(-1).long().cpu())  # (n, dim)
        return rows.reshape(*ids.shape, self.embedding_dim).to(ids.device)

    def extra_repr(self) -> str:
        w = self.weight_blocks
        return f"{w.rows}, {w.cols}, {w.qtype}"


def block_layers(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` that holds block weights (BlockLinear, BlockEmbedding)."""
    return [m for m in model.modules() if isinstance(m, (BlockLinear, BlockEmbedding))]


def is_blocks(model: nn.Module) -> bool:
    """True when the model runs on its file's blocks (``--dtype gguf``)."""
    return any(isinstance(m, BlockLinear) for m in model.modules())


def block_weights(model: nn.Module) -> int:
    """Weights held in blocks, which ``model.parameters()`` does not list; a tied head is counted
    once, as in the fp32 model."""
    return sum(
        m.weight_blocks.rows * m.weight_blocks.cols
        for m in block_layers(model)
        if not getattr(m, "tied", False)
    )


def embedding_rows(embedding: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of a token embedding, fp32 [n, dim], whether it is an nn.Embedding or a
    :class:`BlockEmbedding` (where a whole fp32 table would be a copy of it)."""
    if isinstance(embedding, BlockEmbedding):
        return quant.dequantize(embedding.weight_blocks, ids)
    return embedding.weight[ids].detach().float()


def block_kernels(model: nn.Module) -> str | None:
    """What the block layers' products run on, in words (for `sepcli info`); None without any."""
    names = sorted(
        {quant.kernel_name(m.weight_blocks) for m in model.modules() if isinstance(m, BlockLinear)}
    )
    return "; ".join(names) if names else None
