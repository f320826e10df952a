"""A GGUF file as sepcli reads it: its tensors (memory-mapped, never dequantised here), its quant
mix, the HF config and tokenizer its metadata describes.

``gguf.GGUFReader`` parses every metadata value one array item at a time; on a tokenizer of
50-150K tokens and merges that takes seconds, on every run. So the first open of a file keeps
what the run needs from it (the tensor table: names, types, shapes, byte offsets; the HF config
and tokenizer files, a few MB) in the user cache, keyed by the file's path, size and mtime; a
later open maps the file with numpy and reads the tensor table from the cache. Weights are
never cached: they stay in the file.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sepcli.cachedir import cache_dir
from sepcli.errors import ModelError
from sepcli.files import folder_atomic
from sepcli.weights.quiet import quiet_transformers

MANIFEST = "sepcli-gguf.json"
MANIFEST_FORMAT = 1

# How the reader types a tensor's data (gguf.GGUFReader._build_tensors): float types typed,
# the rest (quantized blocks, BF16) as bytes.
_TYPED = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


class MappedTensor(NamedTuple):
    """What :func:`sepcli.kernels.quant.from_gguf` reads of a ``gguf.ReaderTensor``."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: shape[0] is the innermost (input) dimension
    n_elements: int
    n_bytes: int
    data: np.ndarray


@dataclass(frozen=True)
class TensorEntry:
    name: str
    qtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of its data in the file
    n_bytes: int
    n_elements: int


class GGUFFile:
    """An opened GGUF file: ``tensors`` (name -> :class:`MappedTensor`), ``architecture``,
    ``folder`` (its cached config and tokenizer files)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.folder = _cache_folder(self.path)
        manifest = self.folder / MANIFEST
        self.from_cache = manifest.is_file()
        if not self.from_cache:
            _build_cache(self.path, self.folder)
        meta = json.loads(manifest.read_text())
        self.architecture: str = meta["architecture"]
        self.entries = [TensorEntry(**{**e, "shape": tuple(e["shape"])}) for e in meta["tensors"]]
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r")
        end = max((e.offset + e.n_bytes for e in self.entries), default=0)
        if end > self._map.size:
            raise ModelError(
                f"{self.path.name} is truncated: its tensors need {end} bytes, "
                f"the file has {self._map.size}"
            )

    def tensor(self, name: str) -> MappedTensor:
        """The tensor ``name``, its data a view of the file's memory map."""
        import gguf

        e = self._by_name().get(name)
        if e is None:
            raise ModelError(f"{self.path.name} has no tensor {name!r}")
        raw = self._map[e.offset : e.offset + e.n_bytes]
        typed = _TYPED.get(e.qtype)
        data = raw.view(typed) if typed is not None else raw
        if typed is not None:
            data = data.reshape(tuple(reversed(e.shape)))
        else:  # [rows, row_bytes]
            data = data.reshape(int(np.prod(e.shape[1:], dtype=np.int64)), -1)
        qtype = gguf.GGMLQuantizationType[e.qtype]
        return MappedTensor(e.name, qtype, e.shape, e.n_elements, e.n_bytes, data)

    def _by_name(self) -> dict[str, TensorEntry]:
        if not hasattr(self, "_index"):
            self._index = {e.name: e for e in self.entries}
        return self._index

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def quant_mix(self) -> dict[str, int]:
        """Tensors per type, most common first: {"Q4_K": 169, "F32": 57, ...}."""
        return dict(Counter(e.qtype for e in self.entries).most_common())

    def weights(self) -> int:
        return sum(e.n_elements for e in self.entries)

    def nbytes(self) -> int:
        """Bytes of tensor data (what the blocks hold in memory)."""
        return sum(e.n_bytes for e in self.entries)

    def unsupported(self, supported: frozenset[str]) -> TensorEntry | None:
        """The first tensor whose type is not in ``supported``, or None."""
        return next((e for e in self.entries if e.qtype not in supported), None)


def open_gguf(path: Path) -> GGUFFile:
    """Open a GGUF file; a damaged or truncated one is a one-line ModelError."""
    try:
        return GGUFFile(path)
    except ModelError:
        raise
    except Exception as exc:  # the reader's errors on a bad file are of many kinds
        raise ModelError(f"cannot read {Path(path).name} as a GGUF file ({_why(exc)})") from exc


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    what = text[0] if text else type(exc).__name__
    if isinstance(exc, (ValueError, IndexError)) and "magic" not in what.lower():
        return f"truncated or damaged: {what}"
    return what


def _cache_folder(path: Path) -> Path:
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{path.stem}-{digest}"


def _build_cache(path: Path, final: Path) -> None:
    """Parse the file once with ``gguf.GGUFReader``: the tensor table, the HF config and the
    tokenizer, written to ``final`` (atomically: a crash leaves nothing that looks complete)."""
    import gguf

    reader = gguf.GGUFReader(path, "r")  # raises on a truncated or damaged file
    arch_field = reader.fields.get("general.architecture")
    if arch_field is None:
        raise ModelError(f"{path.name} has no general.architecture: not a model GGUF")
    architecture = bytes(arch_field.parts[arch_field.data[0]]).decode()
    tensors = [
        {
            "name": t.name,
            "qtype": t.tensor_type.name,
            "shape": [int(s) for s in t.shape],
            "offset": int(t.data_offset),
            "n_bytes": int(t.n_bytes),
            "n_elements": int(t.n_elements),
        }
        for t in reader.tensors
    ]
    del reader
    config, tokenizer = _hf_config_and_tokenizer(path)
    with folder_atomic(final) as tmp:
        config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        manifest = {"format": MANIFEST_FORMAT, "architecture": architecture, "tensors": tensors}
        (tmp / MANIFEST).write_text(json.dumps(manifest))


def _hf_config_and_tokenizer(path: Path):
    """transformers' reading of the file's metadata: the config (GGUF keys renamed to HF ones)
    and the tokenizer built from the file's vocabulary."""
    from transformers import AutoConfig, AutoTokenizer

    with quiet_transformers():
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # sepcli holds the blocks itself
    return config, tokenizer
