"""A HF model built from a GGUF file: the skeleton on the meta device (nothing allocated), then
every tensor of the file put in its place, one at a time.

Two ways to fill it:

- **blocks** (``--dtype gguf``): every projection a :class:`~sepcli.weights.blocks.BlockLinear`
  on the file's own bytes (a view of its memory map), the token embedding a
  :class:`~sepcli.weights.blocks.BlockEmbedding`, a tied LM head a BlockLinear over the
  embedding's blocks; norms and biases fp32. Nothing is dequantised but the embedding rows a
  forward looks up.
- **dense** (``--dtype fp32|bf16|fp16``, and the int8 path's fp32 start): each tensor
  dequantised to the compute dtype on the target device, one tensor at a time (on CUDA the block
  bytes go to the GPU and are dequantised there), so the peak beyond the model itself is one
  tensor in fp32.

llama.cpp's converter reorders the rows of a Llama-family file's q and k weights (each head's
rotary pairs interleaved instead of split in halves); transformers' GGUF loader undoes it for
files whose ``general.architecture`` is ``llama`` (``LlamaTensorProcessor``), and so does
:func:`hf_rows`. Blocks run along the input dimension, so the undoing is a permutation of whole
rows of block bytes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sepcli.errors import ModelError
from sepcli.kernels import quant
from sepcli.kernels.quant import BlockTensor
from sepcli.weights.blocks import BlockEmbedding, BlockLinear
from sepcli.weights.gguf_file import GGUFFile, MappedTensor
from sepcli.weights.quiet import quiet_transformers

# GGUF architectures whose q/k rows llama.cpp permutes (what transformers' loader undoes)
PERMUTED_QK = frozenset({"llama"})


def config_of(gf: GGUFFile):
    """The HF config the file's metadata describes (from the cached files)."""
    from transformers import AutoConfig

    with quiet_transformers():
        return AutoConfig.from_pretrained(str(gf.folder))


def tokenizer_of(gf: GGUFFile):
    from transformers import AutoTokenizer

    with quiet_transformers():
        return AutoTokenizer.from_pretrained(str(gf.folder))


def check_types(gf: GGUFFile, supported: frozenset[str], what: str) -> None:
    """ModelError naming the first tensor whose type ``what`` cannot run."""
    bad = gf.unsupported(supported)
    if bad is not None:
        raise ModelError(
            f"{gf.path.name}: tensor {bad.name} is {bad.qtype}, which {what} cannot run; "
            f"supported: {', '.join(sorted(supported))}"
        )


def hf_rows(rows: int, heads: int) -> torch.Tensor:
    """[rows] index: HF's row r of a q or k weight is the file's row ``index[r]``.

    The converter stores head h's row 2i + j (i < D/2, j in {0, 1}) where HF has row j*D/2 + i."""
    half = rows // heads // 2
    return torch.arange(rows).reshape(heads, half, 2).transpose(1, 2).reshape(-1)


def build_model(
    gf: GGUFFile,
    config,
    *,
    blocks: bool,
    dtype: torch.dtype,
    device: torch.device,
    attn_implementation: str = "sdpa",
) -> nn.Module:
    """The model of ``gf`` (see the module doc), eval mode, no grad."""
    import gguf
    from transformers import AutoModelForCausalLM

    with torch.device("meta"), quiet_transformers():
        model = AutoModelForCausalLM.from_config(
            config,
            dtype=torch.float32 if blocks else dtype,
            attn_implementation=attn_implementation,
        )
    arch = _gguf_arch(gf.architecture)
    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    permute = gf.architecture in PERMUTED_QK
    heads = {"attn_q": config.num_attention_heads}
    heads["attn_k"] = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    have = set(gf.names())
    fill = _Filler(gf, blocks, dtype, device, heads if permute else {})

    embedding = None
    for qual, module in list(model.named_modules()):
        if not qual or module is model:
            continue
        base = names.get_name(qual)
        if isinstance(module, nn.Embedding):
            embedding = fill.embedding(model, qual, f"{base}.weight")
        elif isinstance(module, nn.Linear):
            if qual == "lm_head" and f"{base}.weight" not in have:
                continue  # tied: set below, over the embedding
            bias = f"{base}.bias" if module.bias is not None else None
            fill.linear(model, qual, f"{base}.weight", bias)
        elif module._parameters and base is not None:
            for pname, p in list(module._parameters.items()):
                if p is not None:
                    module._parameters[pname] = nn.Parameter(
                        fill.small(f"{base}.{pname}"), requires_grad=False
                    )
    if "output.weight" not in have:
        if embedding is None:
            raise ModelError(f"{gf.path.name}: no token embedding (token_embd.weight)")
        if blocks:
            head = BlockLinear(embedding.weight_blocks)
            head.tied = True
            model.lm_head = head
        else:
            model.lm_head.weight = embedding.weight
    _own_rotary(model, device)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ModelError(f"{gf.path.name}: no tensor in the file for {left[0]}")
    if not getattr(model.config, "architectures", None):
        model.config.architectures = [type(model).__name__]  # as a HF folder's config names it
    model.eval()
    model.requires_grad_(False)
    return model


class _Filler:
    """Turns the file's tensors into the modules and parameters of one model."""

    def __init__(self, gf, blocks, dtype, device, permuted_heads: dict[str, int]):
        self.gf, self.blocks, self.dtype, self.device = gf, blocks, dtype, device
        self.permuted_heads = permuted_heads

    def _rows(self, name: str) -> torch.Tensor | None:
        for key, heads in self.permuted_heads.items():
            if f".{key}." in name:
                rows = int(self.gf.tensor(name).shape[1])
                return hf_rows(rows, heads)
        return None

    def block(self, name: str) -> BlockTensor:
        t = self.gf.tensor(name)
        w = quant.from_gguf(t)
        rows = self._rows(name)
        if rows is not None:
            w = BlockTensor(w.qtype, w.data[rows].contiguous(), w.rows, w.cols)
        return w

    def dense(self, name: str) -> torch.Tensor:
        """The tensor dequantised to the compute dtype on the device: [rows, cols]."""
        t = self.gf.tensor(name)
        if t.tensor_type.name in quant.SUPPORTED:
            w = quant.from_gguf(t)
            if self.device.type == "cpu":  # the C kernels' dequantisation where built
                out = quant.dense(w).to(self.dtype)
            else:  # the block bytes to the device, dequantised there
                w = BlockTensor(w.qtype, w.data.to(self.device), w.rows, w.cols)
                out = quant.dequantize(w).to(self.dtype)
        else:  # a type the blocks do not run: gguf's own (numpy) dequantisation
            out = _gguf_dequantize(t).to(self.device, self.dtype)
        rows = self._rows(name)
        return out if rows is None else out[rows.to(out.device)]

    def small(self, name: str) -> torch.Tensor:
        """A norm or bias (fp32 under blocks), owned (copied out of the map)."""
        t = self.gf.tensor(name)
        if t.tensor_type.name in ("F32", "F16"):
            value = torch.from_numpy(np.array(t.data, dtype=np.float32)).reshape(-1)
        else:
            value = _gguf_dequantize(t).reshape(-1)
        return value.to(self.device, torch.float32 if self.blocks else self.dtype)

    def linear(self, model, qual, weight, bias):
        b = self.small(bias) if bias is not None else None
        if self.blocks:
            _set(model, qual, BlockLinear(self.block(weight), b))
            return
        module = model.get_submodule(qual)
        module.weight = nn.Parameter(self.dense(weight), requires_grad=False)
        if b is not None:
            module.bias = nn.Parameter(b, requires_grad=False)

    def embedding(self, model, qual, weight):
        if self.blocks:
            emb = BlockEmbedding(self.block(weight))
            _set(model, qual, emb)
            return emb
        module = model.get_submodule(qual)
        module.weight = nn.Parameter(self.dense(weight), requires_grad=False)
        return module


def _gguf_dequantize(t: MappedTensor) -> torch.Tensor:
    from gguf.quants import dequantize

    values = dequantize(np.asarray(t.data), t.tensor_type)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(
        tuple(reversed(t.shape))
    )


def _set(model: nn.Module, qual: str, module: nn.Module) -> None:
    owner, _, attr = qual.rpartition(".")
    setattr(model.get_submodule(owner) if owner else model, attr, module)


def _own_rotary(model: nn.Module, device: torch.device) -> None:
    """RoPE's inverse frequencies are computed, not stored: build the rotary module for real."""
    inner = model.model
    rotary = inner.rotary_emb
    inner.rotary_emb = type(rotary)(config=model.config).to(device)


def _gguf_arch(name: str):
    import gguf

    for arch, arch_name in gguf.MODEL_ARCH_NAMES.items():
        if arch_name == name:
            return arch
    raise ModelError(f"GGUF architecture {name!r} is unknown to the gguf package")
