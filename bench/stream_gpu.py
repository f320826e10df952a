"""End-to-end streaming speed with and without the Triton kernels, side by side in one run.

    python bench/stream_gpu.py                                # GPU: Llama-3-8B shape, bf16
    python bench/stream_gpu.py --chunks 1,224 --tokens 8000   # other chunk sizes / lengths
    python bench/stream_gpu.py --shape tiny --tokens 600      # any machine: the script itself runs

The model has random weights (speed does not depend on them) and the shape of Llama-3-8B
(32 layers, hidden 4096, 32 q / 8 kv heads of 128, vocab 128256), or a tiny Llama for a smoke
run. The same random token stream (every sixth vocabulary id a separator, about the share of
real text) goes through :class:`StreamEngine` with ``SEPCLI_KERNELS=auto`` (the Triton ring
kernel on CUDA) and ``SEPCLI_KERNELS=reference`` (the torch path), in alternating rounds so that
clock and thermal changes hit both alike. Each engine first fills its cache to the steady state.
Prints tok/s per chunk size and mode, the ratio, and one JSON line at the end.

This script measures speed only; quality on a GPU is measured with the embedded model through
the CLI (docs/kernels.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine

from common import machine, timed_feed

SHAPES = {
    "llama3-8b": dict(
        vocab_size=128256,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=8192,
        rope_theta=500000.0,
    ),
    "tiny": dict(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        rope_theta=10000.0,
    ),
}


def random_model(shape: str, device: torch.device, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**SHAPES[shape]))
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llama3-8b")
    ap.add_argument("--tokens", type=int, default=4000, help="timed tokens per mode and chunk")
    ap.add_argument("--chunks", default="224", help="comma-separated chunk sizes")
    ap.add_argument("--segment", type=int, default=448, help="tokens per alternating round")
    ap.add_argument("--init", type=int, default=4)
    ap.add_argument("--sep", type=int, default=64)
    ap.add_argument("--window", type=int, default=224)
    ap.add_argument("--capacity", type=int, default=324)
    ap.add_argument(
        "--modes",
        default="auto,reference",
        help="SEPCLI_KERNELS values to compare ('auto' alone for a long speed-only run)",
    )
    args = ap.parse_args()
    modes = args.modes.split(",")
    if not set(modes) <= {"auto", "reference"}:
        print(f"--modes: use auto and/or reference, got {args.modes!r}", file=sys.stderr)
        return 2

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and args.shape != "tiny":
        print(
            "bench/stream_gpu.py needs a CUDA GPU (use --shape tiny to check the script)",
            file=sys.stderr,
        )
        return 2
    dtype = torch.bfloat16
    model = random_model(args.shape, device, dtype)
    vocab = model.config.vocab_size
    separators = torch.zeros(vocab, dtype=torch.bool)
    separators[::6] = True
    gen = torch.Generator().manual_seed(1)
    warm = args.capacity + 2 * args.window
    ids = torch.randint(vocab, (warm + args.tokens,), generator=gen).tolist()

    rows = []
    for chunk in [int(c) for c in args.chunks.split(",")]:
        sizes = dict(
            init=args.init, sep=args.sep, window=args.window, capacity=args.capacity, chunk=chunk
        )
        engines, seconds = {}, dict.fromkeys(modes, 0.0)
        for mode in modes:
            os.environ["SEPCLI_KERNELS"] = mode
            engines[mode] = StreamEngine(model, StreamConfig(**sizes), separators)
            timed_feed(engines[mode], ids[:warm])  # cache at its steady state, kernels built
        seg = max(chunk, args.segment // chunk * chunk)
        for start in range(warm, len(ids), seg):
            part = ids[start : start + seg]
            for mode in modes:
                os.environ["SEPCLI_KERNELS"] = mode
                seconds[mode] += timed_feed(engines[mode], part)
        os.environ.pop("SEPCLI_KERNELS", None)
        row = {"chunk": chunk, **{f"{m}_tok_s": args.tokens / seconds[m] for m in modes}}
        if len(modes) == 2:
            row["kernels_speedup"] = seconds["reference"] / seconds["auto"]
        rows.append(row)
        print(f"chunk {chunk:4d}: " + json.dumps(row), flush=True)
    result = {
        **machine(),
        "shape": args.shape,
        "dtype": str(dtype),
        "tokens": args.tokens,
        "config": {k: getattr(args, k) for k in ("init", "sep", "window", "capacity")},
        "rows": rows,
    }
    if device.type == "cuda":
        result["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
