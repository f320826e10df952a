"""What a model will need in memory, worked out before loading it, and the refusal when the
machine does not have it (a one-line error instead of being killed half-way by the kernel).

need = weights as they will be held + the ring (K and V, and the C step's rotated keys) +
activations of one chunk + a fixed allowance for torch and Python. It is an estimate: a run that
fits it by a hair may still not fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

RUNTIME_BYTES = 400 * 2**20  # torch, transformers and Python, loaded (measured about 350 MB)
DEFAULT_CAPACITY = 324  # the stream defaults (sepcli/stream/config.py): ring slots and chunk
DEFAULT_CHUNK = 224
AVAILABLE_ENV = "SEPCLI_MEM_AVAILABLE"  # bytes; what tests and users set to fake the machine


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes: ``weights`` as held, ``ring``, ``activations`` at ``chunk`` tokens, ``runtime``."""

    weights: int
    ring: int
    activations: int
    runtime: int
    chunk: int

    @property
    def total(self) -> int:
        return self.weights + self.ring + self.activations + self.runtime

    def as_dict(self) -> dict:
        return {
            "total_gb": gb(self.total),
            "weights_gb": gb(self.weights),
            "ring_gb": gb(self.ring),
            "activations_gb": gb(self.activations),
            "chunk": self.chunk,
        }


def gb(n: int) -> float:
    return round(n / 1e9, 3)


def estimate(
    config,
    weight_bytes: int,
    *,
    compute_bytes: int = 4,
    capacity: int = DEFAULT_CAPACITY,
    chunk: int = DEFAULT_CHUNK,
) -> MemoryEstimate:
    """The estimate for a model of ``config`` whose weights take ``weight_bytes`` as held, run
    with ``compute_bytes`` activations (4: fp32) on a ring of ``capacity`` slots, ``chunk``
    tokens per forward."""
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    layers, hidden = config.num_hidden_layers, config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * hidden)
    # K, V and the one-token step's rotated keys (fp32), every layer
    ring = layers * kv * capacity * head_dim * (2 * compute_bytes + 4)
    # per token: a few hidden states, the MLP's gate/up/act, attention scores over the ring and
    # the chunk, fp32 logits and their log-softmax
    per_token = (
        6 * hidden + 3 * inter + heads * (capacity + chunk)
    ) * compute_bytes + 2 * config.vocab_size * 4
    return MemoryEstimate(weight_bytes, ring, chunk * per_token, RUNTIME_BYTES, chunk)


def available_bytes() -> int | None:
    """Memory the machine can give this process now: ``$SEPCLI_MEM_AVAILABLE`` (bytes) if set,
    else MemAvailable from /proc/meminfo; None where neither is known."""
    if os.environ.get(AVAILABLE_ENV):
        try:
            return int(float(os.environ[AVAILABLE_ENV]))
        except ValueError:
            return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def refusal(name: str, need: MemoryEstimate, dtype: str) -> str | None:
    """The one-line reason ``name`` will not fit, or None when it does (or nothing is known)."""
    have = available_bytes()
    if have is None or need.total <= have:
        return None
    return (
        f"{name} with --dtype {dtype} needs about {gb(need.total):.2f} GB (weights "
        f"{gb(need.weights):.2f} GB, ring {gb(need.ring):.2f}, activations at chunk {need.chunk} "
        f"{gb(need.activations):.2f}, runtime {gb(need.runtime):.2f}) but only "
        f"{gb(have):.2f} GB is available (MemAvailable): try a smaller model or quantisation"
    )
