"""A HF checkpoint (safetensors, any float dtype) into the int8 path one decoder layer at a time,
never a whole-model fp32 copy.

:func:`sepcli.quant.quantize_linears` needs the fp32 model whole: it calibrates with one forward
and then swaps the layers. Here the calibration forward runs layer by layer instead: the hidden
state of the calibration text enters layer i, whose weights are read from the files in fp32, its
projections' input ranges are recorded on the way through, it is swapped for int8 and its fp32
weights dropped before layer i + 1 is read. The ranges are those of the one whole forward (each
layer sees the fp32 output of the fp32 layers before it). Tensors are read with plain file reads,
not a memory map, so the checkpoint's pages never count as the process's memory.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

from sepcli import arch
from sepcli.memory import return_freed_memory
from sepcli.quant.calibration import CALIBRATION_TEXT
from sepcli.quant.int8 import Int8Linear
from sepcli.weights.quiet import quiet_transformers

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
READ_BYTES = 8 << 20  # bytes read per piece


class SafetensorsFolder:
    """Every tensor of a folder's ``*.safetensors`` files, by name: where it is, read on demand."""

    def __init__(self, folder: Path):
        self.where: dict[str, tuple[Path, dict, int]] = {}
        for path in sorted(Path(folder).glob("*.safetensors")):
            with open(path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
            for name, info in header.items():
                if name != "__metadata__":
                    self.where[name] = (path, info, 8 + size)

    def __contains__(self, name: str) -> bool:
        return name in self.where

    def read(self, name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The tensor converted to ``dtype``, in memory of its own, read a few MB at a time (so
        the peak is the result plus one piece, not the stored copy beside it)."""
        path, info, base = self.where[name]
        if info["dtype"] not in _DTYPES:
            raise ValueError(f"tensor {name} is {info['dtype']}: not a float weight")
        stored = _DTYPES[info["dtype"]]
        size = torch.tensor([], dtype=stored).element_size()
        start, end = info["data_offsets"]
        out = torch.empty(info["shape"], dtype=dtype)
        flat = out.view(-1)
        piece = (READ_BYTES // size) * size
        with open(path, "rb") as f:
            f.seek(base + start)
            for at in range(0, end - start, piece):
                buf = bytearray(min(piece, end - start - at))
                f.readinto(buf)
                n = at // size
                flat[n : n + len(buf) // size] = torch.frombuffer(buf, dtype=stored)
        return out


def has_safetensors(folder: str) -> bool:
    return Path(folder).is_dir() and any(Path(folder).glob("*.safetensors"))


@torch.inference_mode()
def load_int8(folder: str, config, tokenizer, attn_implementation: str = "sdpa") -> nn.Module:
    """The model of a local HF folder with every projection an :class:`Int8Linear`, calibrated as
    :func:`sepcli.quant.quantize_linears` calibrates, read one layer at a time."""
    from transformers import AutoModelForCausalLM

    from sepcli.stream.reader import start_token  # here: sepcli.stream imports the int8 layer

    files = SafetensorsFolder(Path(folder))
    with torch.device("meta"), quiet_transformers():
        model = AutoModelForCausalLM.from_config(
            config, dtype=torch.float32, attn_implementation=attn_implementation
        )
    inner = arch.backbone(model)
    layers = arch.decoder_layers(model)
    prefix = {f"model.layers.{i}." for i in range(len(layers))}
    # everything outside the decoder layers first: embeddings, final norm, head
    for name, _ in list(model.named_parameters()):
        if not any(name.startswith(p) for p in prefix) and name in files:
            _put(model, name, files.read(name))
    tied = "lm_head.weight" not in files
    if tied:
        model.lm_head.weight = inner.embed_tokens.weight
    inner.rotary_emb = type(inner.rotary_emb)(config=model.config)

    ids = (
        start_token(tokenizer) + tokenizer(CALIBRATION_TEXT, add_special_tokens=False)["input_ids"]
    )
    ids = torch.tensor([ids])  # (1, T)
    hidden = inner.embed_tokens(ids)  # (1, T, hidden)
    positions = torch.arange(ids.shape[1])[None]
    rope = inner.rotary_emb(hidden, positions)
    for i, layer in enumerate(layers):
        for name, _ in list(layer.named_parameters()):
            _put(layer, name, files.read(f"model.layers.{i}.{name}"))
        targets = [(n, m) for n, m in layer.named_modules() if isinstance(m, nn.Linear)]
        ranges = _record(targets)
        out = layer(hidden, position_ids=positions, position_embeddings=rope)
        hidden = out[0] if isinstance(out, tuple) else out
        for (name, module), act_max in zip(targets, ranges.finish(), strict=True):
            owner, _, attr = name.rpartition(".")
            setattr(layer.get_submodule(owner), attr, Int8Linear(module, act_max))
        del targets
        return_freed_memory()
    head_in = inner.norm(hidden).reshape(-1, config.hidden_size)
    head = Int8Linear(model.lm_head, head_in.abs().amax(dim=0))
    head.tied = tied
    model.lm_head = head
    model.eval()
    model.requires_grad_(False)
    return_freed_memory()
    return model


class _record:
    """Pre-forward hooks recording each module's [in] max |input|; ``finish()`` removes them."""

    def __init__(self, targets):
        self.ranges = [torch.zeros(m.in_features) for _, m in targets]
        self.handles = [
            m.register_forward_pre_hook(self._hook(i)) for i, (_, m) in enumerate(targets)
        ]

    def _hook(self, i):
        def hook(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            self.ranges[i] = torch.maximum(self.ranges[i], x.abs().amax(dim=0))

        return hook

    def finish(self) -> list[torch.Tensor]:
        for h in self.handles:
            h.remove()
        return self.ranges


def _put(root: nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, attr = name.rpartition(".")
    module = root.get_submodule(owner) if owner else root
    module._parameters[attr] = nn.Parameter(value, requires_grad=False)
