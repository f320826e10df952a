"""GGUF files of real models' shapes with random weights, for speed and memory at scale: what
they write is noise, but what they read per token is the real model's.

    python bench/gguf_shapes.py [--shapes llama3.2-3b,llama3.1-8b] [--types Q4_K_M,Q8_0]
                                [--keep-f16] [--layers N]

The F16 file is written with the gguf package's writer, one tensor at a time (random normal
weights, std 0.02; norms 1), then quantised by llama.cpp's own ``llama-quantize`` (built by
``python bench/peer_llamacpp.py build``). Files are cached in ``.bench-data/`` as
``<shape>-<type>.gguf``; a file already there is kept. ``--layers`` cuts the layer count (a quick
try of the script: ``--shapes tiny``).

The tokenizer is byte-level (256 byte symbols, two merges, filler tokens up to the real
vocabulary size, so the embedding and head have the real shape).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from peer_llamacpp import build, tool

from common import ROOT

DATA = ROOT / ".bench-data"
SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, tied, rope theta
    "llama3.2-3b": dict(hidden=3072, layers=28, heads=24, kv=8, inter=8192, vocab=128256,
                        tied=True, theta=500000.0),
    "llama3.1-8b": dict(hidden=4096, layers=32, heads=32, kv=8, inter=14336, vocab=128256,
                        tied=False, theta=500000.0),
    "tiny": dict(hidden=256, layers=2, heads=4, kv=2, inter=512, vocab=1024, tied=True,
                 theta=10000.0),
}  # fmt: skip


def byte_tokens(vocab: int) -> list[str]:
    """GPT-2's byte alphabet, two merges' results, fillers, an end token: ``vocab`` in all."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    chars, n = [], 0
    for b in range(256):
        if b in printable:
            chars.append(chr(b))
        else:
            chars.append(chr(256 + n))
            n += 1
    tokens = chars + ["Ġt", "he"]
    tokens += [f"<filler_{i}>" for i in range(vocab - len(tokens) - 1)]
    return tokens + ["<|end_of_text|>"]


def write_f16(path: Path, shape: dict, seed: int = 0) -> None:
    """The F16 file, written tensor by tensor (never the whole model in memory)."""
    import gguf

    s = shape
    head_dim = s["hidden"] // s["heads"]
    tensors = [("token_embd.weight", (s["vocab"], s["hidden"]))]
    for i in range(s["layers"]):
        tensors += [(f"blk.{i}.attn_norm.weight", (s["hidden"],)),
                    (f"blk.{i}.ffn_norm.weight", (s["hidden"],)),
                    (f"blk.{i}.attn_q.weight", (s["heads"] * head_dim, s["hidden"])),
                    (f"blk.{i}.attn_k.weight", (s["kv"] * head_dim, s["hidden"])),
                    (f"blk.{i}.attn_v.weight", (s["kv"] * head_dim, s["hidden"])),
                    (f"blk.{i}.attn_output.weight", (s["hidden"], s["heads"] * head_dim)),
                    (f"blk.{i}.ffn_gate.weight", (s["inter"], s["hidden"])),
                    (f"blk.{i}.ffn_up.weight", (s["inter"], s["hidden"])),
                    (f"blk.{i}.ffn_down.weight", (s["hidden"], s["inter"]))]  # fmt: skip
    tensors.append(("output_norm.weight", (s["hidden"],)))
    if not s["tied"]:
        tensors.append(("output.weight", (s["vocab"], s["hidden"])))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(path.stem)
    w.add_context_length(8192)
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["inter"])
    w.add_block_count(s["layers"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv"])
    w.add_rope_freq_base(s["theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens = byte_tokens(s["vocab"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(["Ġ t", "h e"])
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)
    for name, dims in tensors:
        dtype = np.float32 if len(dims) == 1 else np.float16
        nbytes = int(np.prod(dims)) * np.dtype(dtype).itemsize
        w.add_tensor_info(name, dims, np.dtype(dtype), nbytes)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    gen = np.random.default_rng(seed)
    for _name, dims in tensors:
        if len(dims) == 1:
            w.write_tensor_data(np.ones(dims, dtype=np.float32))
        else:
            w.write_tensor_data(
                (gen.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)
            )
    w.close()


def make(shape_name: str, types: list[str], keep_f16: bool, layers: int | None) -> list[Path]:
    shape = dict(SHAPES[shape_name])
    if layers:
        shape["layers"] = layers
    stem = shape_name if not layers else f"{shape_name}-{layers}l"
    DATA.mkdir(exist_ok=True)
    f16 = DATA / f"{stem}-F16.gguf"
    made = []
    wanted = [DATA / f"{stem}-{t}.gguf" for t in types]
    if any(not p.is_file() for p in wanted) and not f16.is_file():
        print(f"writing {f16}", file=sys.stderr)
        write_f16(f16.with_suffix(".tmp"), shape)
        f16.with_suffix(".tmp").rename(f16)
    for qtype, out in zip(types, wanted, strict=True):
        if not out.is_file():
            if not tool("llama-quantize").is_file():
                build()
            print(f"quantising to {out}", file=sys.stderr)
            tmp = out.with_suffix(".tmp")
            subprocess.run([str(tool("llama-quantize")), str(f16), str(tmp), qtype], check=True,
                           capture_output=True)  # fmt: skip
            tmp.rename(out)
        made.append(out)
    if not keep_f16 and f16.is_file():
        f16.unlink()
    return made


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shapes", default="llama3.2-3b,llama3.1-8b")
    parser.add_argument("--types", default="Q4_K_M,Q8_0")
    parser.add_argument("--keep-f16", action="store_true")
    parser.add_argument("--layers", type=int, help="fewer layers (a quick try)")
    args = parser.parse_args()
    out = {}
    for name in args.shapes.split(","):
        files = make(name, args.types.split(","), args.keep_f16, args.layers)
        out[name] = {p.name: p.stat().st_size for p in files}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
