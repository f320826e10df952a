"""Model surgery: every projection of a loaded model swapped for an :class:`Int8Linear`,
calibrated on :data:`~sepcli.quant.calibration.CALIBRATION_TEXT`."""

from __future__ import annotations

import torch
from torch import nn

from sepcli import arch
from sepcli.errors import ModelError
from sepcli.quant.calibration import CALIBRATION_TEXT, input_ranges
from sepcli.quant.int8 import Int8Linear


def _targets(model: nn.Module, head: bool) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(owner, attribute, layer) for every nn.Linear of the decoder layers (and the LM head)."""
    found = []
    for layer in arch.decoder_layers(model):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                owner, _, attr = name.rpartition(".")
                found.append((layer.get_submodule(owner), attr, module))
    if head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        found.append((model, "lm_head", model.lm_head))
    return found


def quantize_linears(model: nn.Module, tokenizer, head: bool = True) -> int:
    """Swap the decoder layers' nn.Linear modules (and the LM head if ``head``) for
    :class:`Int8Linear`, in place, calibrated on :data:`CALIBRATION_TEXT`. Returns the count."""
    targets = _targets(model, head)
    if not targets:
        raise ModelError("--dtype int8: the model has no linear layers to quantise")
    from sepcli.stream.reader import start_token  # here: sepcli.stream imports this module

    # Led by the stream's start token: its activations (the attention sink's) are the loudest.
    ids = (
        start_token(tokenizer) + tokenizer(CALIBRATION_TEXT, add_special_tokens=False)["input_ids"]
    )
    ids = torch.tensor([ids])  # (1, T)
    ranges = input_ranges(model, ids, [m for _, _, m in targets])
    embedding = arch.backbone(model).embed_tokens.weight
    for (owner, attr, module), act_max in zip(targets, ranges, strict=True):
        quantised = Int8Linear(module, act_max)
        quantised.tied = module.weight is embedding  # an int8 copy of the embedding (LM head)
        setattr(owner, attr, quantised)
    _own_what_stays_fp32(model)
    return len(targets)


@torch.no_grad()
def _own_what_stays_fp32(model: nn.Module) -> None:
    """Copy the tensors that stay fp32 (embeddings, norms) out of the loaded checkpoint's memory
    map: while any of them points into it, the map of every fp32 weight stays resident (~540 MB
    for the embedded model), though the int8 layers no longer read it."""
    from sepcli.memory import return_freed_memory

    for module in model.modules():
        if isinstance(module, Int8Linear):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.clone()
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None:
                setattr(module, name, buf.clone())
    return_freed_memory()


def is_int8(model: nn.Module) -> bool:
    """True when :func:`quantize_linears` has been applied to ``model``."""
    return any(isinstance(m, Int8Linear) for m in model.modules())
