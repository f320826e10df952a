"""Bytes a model's weights will take as held, per --dtype, read from the files before loading
(a GGUF's tensor table, a HF folder's safetensors headers), for :mod:`.estimate`."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from sepcli.weights.estimate import MemoryEstimate, estimate
from sepcli.weights.gguf_file import GGUFFile


def held_bytes(weights: int, largest: int, dtype: str, torch_dtype: torch.dtype) -> int:
    """Weights held once loaded (and at the load's peak) for ``weights`` parameters whose
    largest tensor has ``largest``: dense at the compute dtype plus one fp32 tensor being
    dequantised; int8 a byte each after an fp32 start (one layer at a time for a HF folder is
    not counted here: the fp32 model is the conservative figure)."""
    if dtype == "int8":
        return weights * 5
    return weights * torch.tensor([], dtype=torch_dtype).element_size() + 4 * largest


def gguf_estimate(gf: GGUFFile, config, dtype: str, torch_dtype: torch.dtype) -> MemoryEstimate:
    if dtype == "gguf":
        held = gf.nbytes()
    else:
        largest = max((e.n_elements for e in gf.entries), default=0)
        held = held_bytes(gf.weights(), largest, dtype, torch_dtype)
    return estimate(config, held)


def hf_estimate(path: str, config, dtype: str, torch_dtype: torch.dtype) -> MemoryEstimate | None:
    """None where the weights are not in local safetensors files (a hub id, .bin files)."""
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    if not files:
        return None
    counts = [n for f in files for n in _safetensors_counts(f)]
    return estimate(config, held_bytes(sum(counts), max(counts, default=0), dtype, torch_dtype))


def _safetensors_counts(path: Path) -> list[int]:
    """Element count of every tensor in a safetensors file, from its JSON header alone."""
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    counts = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for d in info["shape"]:
            n *= int(d)
        counts.append(n)
    return counts
