"""Where and how a model runs: device, dtype (including the int8 path) and CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sepcli.errors import ConfigError, ModelError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# Quantised weights: the name -> the compute dtype of everything that is not quantised.
# gguf: a GGUF file's tensors kept in their own block formats (sepcli/weights).
QUANT_DTYPES = {"int8": torch.float32, "gguf": torch.float32}


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (/proc/cpuinfo), empty where they cannot be read."""
    try:
        return frozenset(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return frozenset()


def cpu_has_amx() -> bool:
    """True when the CPU has AMX bf16 tiles (``amx_bf16``): the one CPU where bf16 matmuls beat
    the int8 path (AVX512-BF16 alone does not, docs/models.md)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_int8_dot() -> bool:
    """True when the CPU has integer dot-product instructions (AVX512-VNNI, AVX-VNNI or AMX int8):
    the ones oneDNN's int8 GEMM needs to be fast. Without them (an AVX2-only CPU) that GEMM is
    20x slower than fp32's (docs/models.md), so int8 is no default there."""
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def int8_supported(device: torch.device) -> str | None:
    """None when the int8 path runs on ``device``, else why not (one line)."""
    if device.type != "cpu":
        return f"--dtype int8 runs on a CPU only, not on {device.type}"
    if not torch.backends.mkldnn.is_available():
        return "--dtype int8 needs torch built with oneDNN (mkldnn), which this build lacks"
    return None


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA GPU")
    if device not in ("cpu", "cuda"):
        raise ModelError(f"unknown --device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device, gguf_blocks: bool = False) -> str:
    """The --dtype name to load with. auto: bf16 on CUDA; on a CPU, gguf for a GGUF file whose
    every tensor the block kernels run in their fast (AVX512-VNNI) build (``gguf_blocks``: the
    least memory, no second quantisation, decode and reading at or past llama.cpp's speed); else
    bf16 on a CPU with AMX; int8 on another CPU with integer dot products that runs it (faster
    than fp32 and than AVX512-BF16, within 1% perplexity); else fp32. docs/models.md has the
    measurements behind each choice."""
    if dtype == "auto":
        if device.type == "cuda":
            return "bf16"
        if gguf_blocks:
            return "gguf"
        if cpu_has_amx():
            return "bf16"
        fast_int8 = cpu_has_int8_dot() and int8_supported(device) is None
        return "int8" if fast_int8 else "fp32"
    if dtype == "int8":
        why = int8_supported(device)
        if why is not None:
            raise ModelError(why)
        return dtype
    if dtype == "gguf":
        if device.type != "cpu":
            raise ModelError(
                f"--dtype gguf runs on a CPU only, not on {device.type} (on a GPU, bf16 "
                "dequantises the file's tensors on the device)"
            )
        return dtype
    if dtype not in DTYPES:
        raise ModelError(f"unknown --dtype {dtype!r}: use auto, gguf, bf16, fp16, fp32 or int8")
    return dtype


def physical_cores() -> int:
    """Physical CPU cores: distinct (package, core) pairs in /proc/cpuinfo, else the logical
    count. Hyper-threads share one core's matmul units, so more threads than cores only adds
    contention."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    cores = set()
    for block in text.split("\n\n"):
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines())
        )
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores) or os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op threads (None: the physical cores); returns the count used."""
    if threads is None:
        threads = physical_cores()
    if threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    return threads
