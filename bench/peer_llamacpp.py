"""sepcli against the real llama.cpp on the same GGUF and text (figures in docs/models.md).

    python bench/peer_llamacpp.py build
    python bench/peer_llamacpp.py perplexity [--tokens 20000] [--rounds 2] [--threads 2]
                                             [--dtypes fp32,int8] [--n-ctx 512]
    python bench/peer_llamacpp.py decode     [--tokens 64] [--rounds 2] [--threads 2]
                                             [--dtypes fp32,int8]
    python bench/peer_llamacpp.py busy       [--tokens 4000] [--rounds 2] [--threads 2]
                                             [--dtypes auto] [--busy 2]

`build` compiles llama.cpp's `llama-perplexity` and `llama-bench` from the llama.cpp sources
vendored in the PyPI sdist of llama-cpp-python (downloaded with pip) into
~/.cache/sepcli-bench/ (``$SEPCLI_BENCH_CACHE``), under a lock; the other modes build it first
when it is missing. Both tools read the embedded SmolLM2-135M-Instruct Q4_1 GGUF.

perplexity: `llama-perplexity -c N_CTX` on the first --tokens tokens of the essays (it reads
whole windows of N_CTX tokens and scores the second half of each), and `sepcli stream` (its
default SepLLM config) on the same text, in alternating rounds, same threads. Reported: tokens
read per second, tokens scored per second, the ratios, and each side's perplexity.

decode: `llama-bench -p 0 -n N` (token generation) against sepcli decoding one token at a time
on the ring (StreamEngine.feed([token]) with greedy argmax of engine.last_logits) after a prompt of
the essays, alternating rounds.

busy: how each tool degrades when the machine is busy (issue 29, item 2). Each round measures
`llama-perplexity` against `sepcli stream`, and `llama-bench -n` against `sepcli generate`
(both as a user runs them, in subprocesses with their default environment), once on the quiet
machine and once while --busy processes spin (one pure-Python loop each, default priority: one
per core is a fixed competing load). Reported per tool: busy / quiet speed (1.0 = no loss).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sepcli.models import embedded_gguf_path, load_model
from sepcli.quant import decode_kernels
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.reader import start_token
from sepcli.texts import essays_text

from common import ROOT

PACKAGE = "llama-cpp-python"
# llama-server: bench/serve.py; llama-quantize: the 3B/8B-shaped GGUF files (issue 26)
TARGETS = ("llama-perplexity", "llama-bench", "llama-server", "llama-quantize")


def bench_cache() -> Path:
    return Path(os.environ.get("SEPCLI_BENCH_CACHE", Path.home() / ".cache" / "sepcli-bench"))


def tool(name: str) -> Path:
    return bench_cache() / "llama.cpp-build" / "bin" / name


def build() -> dict:
    """Download the sdist (once), configure and build the two tools (once). Returns versions."""
    cache = bench_cache()
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two benches must not build into one folder at once
        src = cache / "src"
        sdists = sorted(src.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            src.mkdir(exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
                + [PACKAGE, "-d", str(src)],
                check=True,
            )
            sdists = sorted(src.glob("llama_cpp_python-*.tar.gz"))
        sdist = sdists[-1]
        tree = src / sdist.name.removesuffix(".tar.gz")
        if not tree.is_dir():
            subprocess.run(["tar", "xzf", str(sdist), "-C", str(src)], check=True)
        llama = tree / "vendor" / "llama.cpp"
        out = cache / "llama.cpp-build"
        no_amx = out / "no-amx"  # marker: the native build's AMX kernels crashed here
        if not all(tool(t).is_file() for t in TARGETS):
            _cmake(llama, out, amx=not no_amx.exists())
        if not no_amx.exists() and _amx_crashes(tree):
            # ggml's AMX matmul (compiled in by -march=native where the CPU has AMX) died with
            # SIGSEGV on the machines of 2026-12 (Firecracker VMs with amx_int8); llama.cpp's
            # AVX512 path is its best working one there.
            no_amx.parent.mkdir(parents=True, exist_ok=True)
            no_amx.write_text("the native build's AMX matmul crashed (SIGSEGV); built without\n")
            _cmake(llama, out, amx=False)
    amx = "off (its AMX kernels crashed here)" if no_amx.exists() else "as -march=native"
    return {"sdist": sdist.name, "build": str(out), "amx": amx}


def _cmake(llama: Path, out: Path, amx: bool) -> None:
    flags = [] if amx else ["-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"]
    subprocess.run(
        ["cmake", "-S", str(llama), "-B", str(out), "-DCMAKE_BUILD_TYPE=Release"]
        + ["-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF"]
        + [f"-DCMAKE_C_FLAGS={' '.join(flags)}", f"-DCMAKE_CXX_FLAGS={' '.join(flags)}"],
        check=True,
    )
    jobs = str(os.cpu_count() or 1)
    subprocess.run(["cmake", "--build", str(out), "--target", *TARGETS, "-j", jobs], check=True)


def _amx_crashes(tree: Path) -> bool:
    """Whether llama-perplexity dies of a signal on a few windows of text (the embedded model)."""
    if "amx_int8" not in Path("/proc/cpuinfo").read_text():
        return False
    text = tree / "README.md"  # any English text of a few thousand tokens
    cmd = [str(tool("llama-perplexity")), "-m", str(embedded_gguf_path()), "-f", str(text)]
    proc = subprocess.run(cmd + ["-c", "128", "--chunks", "2"], capture_output=True)
    return proc.returncode < 0
    return {"sdist": sdist.name, "build": str(out)}


def essays_file(tok, tokens: int, folder: Path) -> tuple[Path, int]:
    """The essays cut after ``tokens`` tokens (sepcli's tokenizer), written to a file both
    tools read. Returns (file, tokens in it)."""
    text = essays_text()
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    n = min(tokens, len(enc["input_ids"]))
    path = folder / f"essays-{n}.txt"
    path.write_text(text[: enc["offset_mapping"][n - 1][1]], encoding="utf-8")
    return path, n


STAMP = re.compile(r"(\d+)\.(\d{2})\.(\d{3})\.(\d{3}) [A-Z] ")


def _stamp(log: str, marker: str) -> float:
    """Seconds since start of the log entry holding ``marker``: the last of llama.cpp's
    M.SS.mmm.uuu stamps before it. (An entry can follow an unfinished one on the same line, as
    "Final estimate" follows the first pass's "ETA ..." line, so the line's first stamp is not
    always the marker's.)"""
    at = log.index(marker)
    m, sec, ms, us = (int(p) for p in list(STAMP.finditer(log, 0, at))[-1].groups())
    return m * 60 + sec + ms / 1e3 + us / 1e6


def run_llama_perplexity(text: Path, threads: int, n_ctx: int) -> dict:
    """llama-perplexity over the whole file: PPL, windows, tokens read and scored per second
    (prompt-eval time, model load excluded)."""
    cmd = [str(tool("llama-perplexity")), "-m", str(embedded_gguf_path()), "-f", str(text)]
    cmd += ["-c", str(n_ctx), "-t", str(threads), "-tb", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = out.stdout + out.stderr
    windows = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
    ppl = float(re.search(r"Final estimate: PPL = ([\d.]+)", log).group(1))
    # Scoring time: from the line that starts it to the final estimate (load excluded), read
    # from the log's own timestamps (minutes.seconds.ms.us).
    seconds = _stamp(log, "Final estimate") - _stamp(log, "calculating perplexity over")
    read = windows * n_ctx
    # Each window's first half is context only; tokens n_ctx/2 .. n_ctx-1 are scored.
    scored = windows * (n_ctx - n_ctx // 2 - 1)
    return {
        "tool": "llama-perplexity",
        "command": " ".join(cmd),
        "ppl": ppl,
        "windows": windows,
        "tokens_read": read,
        "tokens_scored": scored,
        "seconds": round(seconds, 2),
        "read_per_s": round(read / seconds, 1),
        "scored_per_s": round(scored / seconds, 1),
    }


def run_sepcli_stream(text: Path, threads: int, dtype: str) -> dict:
    """`sepcli stream` (default SepLLM config) on the file, as a user runs it; streaming time
    from its summary (model load excluded)."""
    cmd = [sys.executable, "-m", "sepcli", "stream", str(text), "--json"]
    cmd += ["--dtype", dtype, "--threads", str(threads), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    seconds = summary["elapsed_s"]
    read, scored = summary["input_tokens"], summary["tokens"]
    return {
        "tool": "sepcli stream",
        "command": "sepcli " + " ".join(cmd[3:]),
        "dtype": summary["dtype"],
        "threads": summary["threads"],
        "ppl": summary["ppl"],
        "tokens_read": read,
        "tokens_scored": scored,
        "seconds": seconds,
        "read_per_s": round(read / seconds, 1),
        "scored_per_s": round(scored / seconds, 1),
    }


def perplexity(args) -> dict:
    from sepcli.models import load_tokenizer

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        text, n = essays_file(load_tokenizer("smollm2"), args.tokens, Path(tmp))
        for r in range(args.rounds):
            row = {"round": r, "llama.cpp": run_llama_perplexity(text, args.threads, args.n_ctx)}
            for dtype in args.dtypes.split(","):
                row[f"sepcli {dtype}"] = run_sepcli_stream(text, args.threads, dtype)
            rounds.append(row)
            print(json.dumps(row), file=sys.stderr)
    best = {k: max(r[k]["read_per_s"] for r in rounds) for k in rounds[0] if k != "round"}
    best_scored = {k: max(r[k]["scored_per_s"] for r in rounds) for k in rounds[0] if k != "round"}
    peer = "llama.cpp"
    return {
        "tokens": n,
        "n_ctx": args.n_ctx,
        "rounds": rounds,
        "best_read_per_s": best,
        "best_scored_per_s": best_scored,
        "read_ratio_vs_llama": {k: round(v / best[peer], 2) for k, v in best.items()},
        "scored_ratio_vs_llama": {
            k: round(v / best_scored[peer], 2) for k, v in best_scored.items()
        },
        "ppl": {k: rounds[0][k]["ppl"] for k in best},
    }


def llama_decode(threads: int, tokens: int, depth: int) -> dict:
    """llama-bench token generation (-p 0 -n tokens) after ``depth`` tokens of context."""
    cmd = [str(tool("llama-bench")), "-m", str(embedded_gguf_path()), "-p", "0"]
    cmd += ["-n", str(tokens), "-d", str(depth), "-t", str(threads), "-r", "3", "-o", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)[0]
    return {"command": " ".join(cmd), "tok_per_s": round(result["avg_ts"], 1)}


@torch.inference_mode()
def sepcli_decode(lm, prompt: list[int], tokens: int) -> dict:
    """Greedy decoding one token at a time on the ring, as `sepcli generate` does: the prompt
    in one chunk, then feed([token]) with the argmax of the last logits."""
    engine = StreamEngine(lm.model, StreamConfig(), separator_mask(lm.tokenizer), score=False)
    for start in range(0, len(prompt), engine.config.chunk):
        engine.feed(prompt[start : start + engine.config.chunk])
    token = int(engine.last_logits.argmax())
    engine.feed([token])  # warm-up step, not timed
    t0 = time.perf_counter()
    for _ in range(tokens):
        token = int(engine.last_logits.argmax())
        engine.feed([token])
    seconds = time.perf_counter() - t0
    return {
        "tok_per_s": round(tokens / seconds, 1),
        "dtype": lm.dtype_name,
        "decode_kernels": decode_kernels(lm.model),
    }


def run_sepcli_generate(threads: int, tokens: int, dtype: str) -> dict:
    """`sepcli generate` greedy from a short prompt, its decode rate from --json (set-up and
    prefill excluded)."""
    cmd = [sys.executable, "-m", "sepcli", "generate", "-p", "Once upon a time, in a small town,"]
    cmd += ["-n", str(tokens), "--temperature", "0", "--ignore-eos", "--json", "--dtype", dtype]
    cmd += ["--threads", str(threads), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "command": "sepcli " + " ".join(cmd[3:]),
        "dtype": summary.get("dtype"),
        "tok_per_s": summary["decode_tok_per_s"],
    }


class Busy:
    """``n`` processes spinning a pure-Python loop while the block runs (stopped after it)."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        spin = "while True: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.kill()
            proc.wait()


def busy(args) -> dict:
    from sepcli.models import load_tokenizer

    dtype = args.dtypes.split(",")[0]
    sides = {
        "llama-perplexity": lambda text: run_llama_perplexity(text, args.threads, args.n_ctx),
        "sepcli stream": lambda text: run_sepcli_stream(text, args.threads, dtype),
        "llama-bench -n": lambda text: llama_decode(args.threads, 64, 0),
        "sepcli generate": lambda text: run_sepcli_generate(args.threads, 64, dtype),
    }
    rate = {"llama-perplexity": "read_per_s", "sepcli stream": "read_per_s"}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        text, n = essays_file(load_tokenizer("smollm2"), args.tokens, Path(tmp))
        for r in range(args.rounds):
            row = {"round": r}
            for load in (0, args.busy):
                with Busy(load):
                    for name, run in sides.items():
                        out = run(text)
                        row[f"{name} busy={load}"] = out[rate.get(name, "tok_per_s")]
            rounds.append(row)
            print(json.dumps(row), file=sys.stderr)
    kept = {}
    for name in sides:
        quiet = max(r[f"{name} busy=0"] for r in rounds)
        loaded = max(r[f"{name} busy={args.busy}"] for r in rounds)
        kept[name] = round(loaded / quiet, 2)
    return {"tokens": n, "busy_processes": args.busy, "dtype": dtype, "rounds": rounds,
            "kept_under_load": kept}


def decode(args) -> dict:
    models = {d: load_model("smollm2", device="cpu", dtype=d) for d in args.dtypes.split(",")}
    tok = next(iter(models.values())).tokenizer
    prompt = start_token(tok) + tok(essays_text(), add_special_tokens=False)["input_ids"]
    prompt = prompt[: args.depth]
    rounds = []
    for r in range(args.rounds):
        row = {"round": r, "llama.cpp": llama_decode(args.threads, args.tokens, args.depth)}
        for d, lm in models.items():
            row[f"sepcli {d}"] = sepcli_decode(lm, prompt, args.tokens)
        rounds.append(row)
        print(json.dumps(row), file=sys.stderr)
    best = {k: max(r[k]["tok_per_s"] for r in rounds) for k in rounds[0] if k != "round"}
    return {
        "tokens": args.tokens,
        "depth": args.depth,
        "rounds": rounds,
        "best_tok_per_s": best,
        "ratio_vs_llama": {k: round(v / best["llama.cpp"], 2) for k, v in best.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("build", "perplexity", "decode", "busy"))
    parser.add_argument("--tokens", type=int, help="perplexity: 20000; decode: 64")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dtypes", help="sepcli's dtypes (default: fp32,int8; busy: auto)")
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--depth", type=int, default=224, help="decode: context before it")
    parser.add_argument("--busy", type=int, default=2, help="busy: spinning processes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    versions = build()
    if args.mode == "build":
        print(json.dumps(versions))
        return
    if args.tokens is None:
        args.tokens = {"perplexity": 20000, "busy": 4000}.get(args.mode, 64)
    if args.dtypes is None:
        args.dtypes = "auto" if args.mode == "busy" else "fp32,int8"
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    result = {"perplexity": perplexity, "decode": decode, "busy": busy}[args.mode](args)
    record = {
        "bench": f"peer_llamacpp {args.mode}",
        "llama_cpp": versions["sdist"],
        "threads": args.threads,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        **result,
    }
    text = json.dumps(record, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
