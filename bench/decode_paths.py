"""Where an int8 decode step goes, by the path it runs on (figures in docs/kernels.md, models.md).

    python bench/decode_paths.py [--tokens 64] [--prompt 224] [--rounds 2] [--threads 1]

Each path runs in its own process (the kernels and torch's CPU capability are chosen at start),
paths alternating round by round. A process loads the embedded model in int8, feeds a
--prompt-token essay prompt, then --tokens greedy one-token steps on the default ring, and
reports tok/s, the whole step and the part spent in the decoder layers (``OneToken.forward``):

- ``c``: the C step (kernels/cpu), as `sepcli generate` runs here;
- ``torch``: ``SEPCLI_KERNELS=reference``, the torch step on torch's 4-bit kernel;
- ``c-avx2`` / ``torch-avx2``: the same two with this CPU running AVX2 code only (the C kernels
  built with ``-mno-avx512f`` through a compiler wrapper, torch with ``ATEN_CPU_CAPABILITY=avx2``):
  a stand-in for an AVX2-only CPU, not one.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import command, machine, write_result


def one_path(prompt: int, tokens: int) -> dict:
    """Run in a child process: the timing of one path (its environment set by the parent)."""
    import torch

    from sepcli.cli_common import load
    from sepcli.quant import decode_kernels
    from sepcli.separators import separator_mask
    from sepcli.stream.config import StreamConfig
    from sepcli.stream.engine import StreamEngine

    from common import essay_ids

    lm = load("smollm2", "cpu", "int8", int(os.environ["DECODE_THREADS"]))
    engine = StreamEngine(lm.model, StreamConfig(), separator_mask(lm.tokenizer), score=False)
    engine.feed(essay_ids(lm.tokenizer, prompt - 1))
    engine.feed([int(engine.last_logits.argmax())])  # warm-up step, not timed
    layers = 0.0
    forward = engine.one_token.forward

    def timed(*args):
        nonlocal layers
        start = time.perf_counter()
        out = forward(*args)
        layers += time.perf_counter() - start
        return out

    engine.one_token.forward = timed
    start = time.perf_counter()
    for _ in range(tokens):
        engine.feed([int(engine.last_logits.argmax())])
    seconds = time.perf_counter() - start
    return {
        "tok_per_s": round(tokens / seconds, 1),
        "step_ms": round(seconds / tokens * 1e3, 2),
        "layers_ms": round(layers / tokens * 1e3, 2),
        "decode_kernels": decode_kernels(lm.model),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def paths(folder: Path) -> dict[str, dict[str, str]]:
    """Each path's environment; the AVX2 C build gets its own compiler wrapper and cache."""
    wrapper = folder / "cc-avx2"
    wrapper.write_text(f'#!/bin/sh\nexec {os.environ.get("CC", "cc")} "$@" -mno-avx512f\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    avx2 = {"ATEN_CPU_CAPABILITY": "avx2"}
    return {
        "c": {},
        "torch": {"SEPCLI_KERNELS": "reference"},
        "c-avx2": {**avx2, "CC": str(wrapper), "SEPCLI_CACHE_DIR": str(folder / "cache")},
        "torch-avx2": {**avx2, "SEPCLI_KERNELS": "reference"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prompt", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_path(args.prompt, args.tokens)))
        return
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        envs = paths(Path(tmp))
        for r in range(args.rounds):
            for name, extra in envs.items():
                env = {**os.environ, **extra, "DECODE_THREADS": str(args.threads)}
                cmd = [sys.executable, __file__, "--child"]
                cmd += ["--tokens", str(args.tokens), "--prompt", str(args.prompt)]
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                row = json.loads(done.stdout.strip().splitlines()[-1])
                runs.setdefault(name, []).append(row)
                print(r, name, json.dumps(row), file=sys.stderr)
    result = {
        "bench": "decode-paths",
        "command": command(),
        **machine(),
        "threads": args.threads,
        "prompt_tokens": args.prompt,
        "tokens": args.tokens,
        "environments": envs,  # the wrapper and cache lay in a temporary folder
        "runs": runs,
    }
    write_result("decode-paths.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
