"""sepcli on GGUF files in their own blocks (``--dtype gguf``) against llama.cpp on the same file,
same threads, alternating rounds (issue 26's targets; figures for docs/models.md).

    python bench/peer_gguf.py memory  --model FILE [--tokens 2000]
    python bench/peer_gguf.py decode  --model FILE [--threads 1,2] [--tokens 64] [--rounds 3]
                                      [--depth 64]
    python bench/peer_gguf.py read    --model FILE [--threads 2] [--tokens 8000] [--rounds 2]
    python bench/peer_gguf.py load    --model FILE
    python bench/peer_gguf.py dtypes  --model FILE [--dtypes gguf,auto,int8] [--threads 1,2]

memory: peak RSS (the child's own ru_maxrss, from wait4) of `sepcli stream` over --tokens of the
essays and of `sepcli generate -n 32`, beside llama-perplexity's and llama-bench's on the same
file, and the file size (target: sepcli <= 1.15 x file + 0.6 GB).
decode: `sepcli generate` (its decode tok/s, greedy, after a --depth token prompt) against
`llama-bench -p 0 -n N -d depth`, per thread count.
read: `sepcli stream` (tokens read per second, load excluded) against `llama-perplexity -c 512`
on the same text (tokens read and scored per second, from its log's stamps).
load: the first load (a fresh cache folder) and a second one of `sepcli info`: seconds and peak
RSS.

Make the files with ``python bench/gguf_shapes.py`` (the 3B and 8B shapes) and
``python bench/fetch_qwen.py`` (Qwen2.5-Coder-1.5B Q4_K_M). Wrap timed runs in
``flock /tmp/sepcli-bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peer_llamacpp import _stamp, tool

from common import ROOT, command, machine, write_result

# A process keeps the peak RSS of what it was before exec (ru_maxrss survives execve), so the
# command is forked from this small shim, not from the bench's own process (torch loaded).
SHIM = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(f'@@maxrss {usage.ru_maxrss}', file=sys.stderr)\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run ``cmd``; (stdout + stderr, wall seconds, peak RSS in GB of that process alone)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-S", "-c", SHIM, *cmd], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, **(env or {})})  # fmt: skip
    seconds = time.perf_counter() - t0
    log = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{log[-3000:]}")
    peak = int(re.findall(r"@@maxrss (\d+)", log)[-1]) * 1024 / 1e9
    return log, seconds, peak


def sepcli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sepcli", *args]


def essays_file(model: str, tokens: int, folder: Path) -> Path:
    """The essays cut after about ``tokens`` tokens of the model's tokenizer."""
    from sepcli.models import load_tokenizer
    from sepcli.texts import essays_text

    text = essays_text()
    enc = load_tokenizer(model)(text, add_special_tokens=False, return_offsets_mapping=True)
    n = min(tokens, len(enc["input_ids"]))
    path = folder / f"essays-{n}.txt"
    path.write_text(text[: enc["offset_mapping"][n - 1][1]], encoding="utf-8")
    return path


def last_json(log: str) -> dict:
    for line in reversed(log.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON line in the output")


def sepcli_stream(model: str, text: Path, threads: int, dtype: str = "gguf") -> dict:
    log, _, peak = run_measured(
        sepcli(
            "stream",
            str(text),
            "-m",
            model,
            "--json",
            "--dtype",
            dtype,
            "--device",
            "cpu",
            "--threads",
            str(threads),
        )  # fmt: skip
    )
    s = last_json(log)
    return {"ppl": s["ppl"], "read_per_s": round(s["input_tokens"] / s["elapsed_s"], 1),
            "dtype": s.get("dtype"), "peak_rss_gb": round(peak, 3)}  # fmt: skip


def sepcli_generate(model: str, prompt: Path, threads: int, tokens: int, dtype: str = "gguf"):
    log, _, peak = run_measured(
        sepcli(
            "generate",
            str(prompt),
            "-m",
            model,
            "-n",
            str(tokens),
            "--ignore-eos",
            "--json",
            "--dtype",
            dtype,
            "--device",
            "cpu",
            "--threads",
            str(threads),
        )  # fmt: skip
    )
    s = last_json(log)
    return {"decode_tok_per_s": s["decode_tok_per_s"], "dtype": s["dtype"],
            "peak_rss_gb": round(peak, 3)}  # fmt: skip


def llama_perplexity(model: str, text: Path, threads: int, n_ctx: int = 512) -> dict:
    cmd = [str(tool("llama-perplexity")), "-m", model, "-f", str(text), "-c", str(n_ctx)]
    cmd += ["-t", str(threads), "-tb", str(threads)]
    log, _, peak = run_measured(cmd)
    windows = int(re.search(r"calculating perplexity over (\d+) chunks", log).group(1))
    seconds = _stamp(log, "Final estimate") - _stamp(log, "calculating perplexity over")
    return {"ppl": float(re.search(r"Final estimate: PPL = ([\d.]+)", log).group(1)),
            "read_per_s": round(windows * n_ctx / seconds, 1),
            "scored_per_s": round(windows * (n_ctx - n_ctx // 2 - 1) / seconds, 1),
            "peak_rss_gb": round(peak, 3)}  # fmt: skip


def llama_bench(model: str, threads: int, tokens: int, depth: int) -> dict:
    cmd = [str(tool("llama-bench")), "-m", model, "-p", "0", "-n", str(tokens), "-d", str(depth)]
    cmd += ["-t", str(threads), "-r", "3", "-o", "json"]
    log, _, peak = run_measured(cmd)
    result = json.JSONDecoder().raw_decode(log[log.index("[") :])[0][0]  # stderr follows
    return {"tok_per_s": round(result["avg_ts"], 1), "peak_rss_gb": round(peak, 3)}


def memory(args) -> dict:
    size = Path(args.model).stat().st_size / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        text = essays_file(args.model, args.tokens, Path(tmp))
        prompt = essays_file(args.model, 64, Path(tmp))
        threads = int(args.threads.split(",")[0])
        row = {
            "file_gb": round(size, 3),
            "target_gb": round(1.15 * size + 0.6, 3),
            "sepcli stream": sepcli_stream(args.model, text, threads),
            "sepcli generate": sepcli_generate(args.model, prompt, threads, 32),
            "llama-perplexity": llama_perplexity(args.model, text, threads),
            "llama-bench": llama_bench(args.model, threads, 32, 0),
        }
    return row


def decode(args) -> dict:
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        prompt = essays_file(args.model, args.depth, Path(tmp))
        for r in range(args.rounds):
            for threads in map(int, args.threads.split(",")):
                row = {"round": r, "threads": threads,
                       "llama.cpp": llama_bench(args.model, threads, args.tokens, args.depth),
                       "sepcli": sepcli_generate(args.model, prompt, threads, args.tokens)}  # fmt: skip
                rounds.append(row)
                print(json.dumps(row), file=sys.stderr)
    best = {}
    for threads in map(int, args.threads.split(",")):
        mine = [r for r in rounds if r["threads"] == threads]
        peer = max(r["llama.cpp"]["tok_per_s"] for r in mine)
        ours = max(r["sepcli"]["decode_tok_per_s"] for r in mine)
        best[threads] = {"llama.cpp": peer, "sepcli": ours, "ratio": round(ours / peer, 2)}
    return {"rounds": rounds, "best": best}


def read(args) -> dict:
    threads = int(args.threads.split(",")[0])
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        text = essays_file(args.model, args.tokens, Path(tmp))
        for r in range(args.rounds):
            row = {"round": r, "llama-perplexity": llama_perplexity(args.model, text, threads),
                   "sepcli stream": sepcli_stream(args.model, text, threads)}  # fmt: skip
            rounds.append(row)
            print(json.dumps(row), file=sys.stderr)
    peer = max(r["llama-perplexity"]["read_per_s"] for r in rounds)
    peer_scored = max(r["llama-perplexity"]["scored_per_s"] for r in rounds)
    ours = max(r["sepcli stream"]["read_per_s"] for r in rounds)  # sepcli scores every token read
    return {"rounds": rounds, "read_ratio": round(ours / peer, 2),
            "scored_ratio": round(ours / peer_scored, 2)}  # fmt: skip


def dtypes(args) -> dict:
    """sepcli against itself: each --dtype of --dtypes on the same file (stream read tok/s and
    ppl, generate decode tok/s), per thread count, alternating rounds: what ``auto`` should
    pick for a GGUF."""
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        text = essays_file(args.model, args.tokens, Path(tmp))
        prompt = essays_file(args.model, args.depth, Path(tmp))
        for r in range(args.rounds):
            for threads in map(int, args.threads.split(",")):
                for dt in args.dtypes.split(","):
                    row = {"round": r, "threads": threads, "dtype": dt,
                           "stream": sepcli_stream(args.model, text, threads, dt),
                           "generate": sepcli_generate(args.model, prompt, threads, 32, dt)}  # fmt: skip
                    rounds.append(row)
                    print(json.dumps(row), file=sys.stderr)
    best = {}
    for threads in map(int, args.threads.split(",")):
        for dt in args.dtypes.split(","):
            mine = [r for r in rounds if r["threads"] == threads and r["dtype"] == dt]
            best[f"{dt} t{threads}"] = {
                "read_per_s": max(r["stream"]["read_per_s"] for r in mine),
                "ppl": mine[0]["stream"]["ppl"],
                "decode_tok_per_s": max(r["generate"]["decode_tok_per_s"] for r in mine),
            }
    return {"rounds": rounds, "best": best}


def load(args) -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for which in ("first", "second"):
            log, seconds, peak = run_measured(
                sepcli("info", "-m", args.model, "--json", "--device", "cpu"),
                env={"SEPCLI_CACHE_DIR": cache},
            )
            facts = last_json(log)
            out[which] = {"process_s": round(seconds, 2), "load_s": facts["load_s"],
                          "peak_rss_gb": round(peak, 3), "dtype": facts["dtype"]}  # fmt: skip
    out["quant_mix"] = facts.get("quant_mix")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=("memory", "decode", "read", "load", "dtypes"))
    parser.add_argument("--model", required=True, help="a .gguf file")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--tokens", type=int, help="memory 2000, decode 64, read 8000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--depth", type=int, default=64)
    parser.add_argument("--dtypes", default="gguf,auto,int8", help="dtypes mode: what to compare")
    args = parser.parse_args()
    args.model = str(Path(args.model).resolve())
    args.tokens = args.tokens or {"memory": 2000, "decode": 64, "read": 8000, "dtypes": 2000}.get(args.mode, 0)
    modes = {"memory": memory, "decode": decode, "read": read, "load": load, "dtypes": dtypes}
    result = modes[args.mode](args)
    payload = {"command": command(), "model": Path(args.model).name, **machine(), **result}
    write_result(f"peer_gguf_{args.mode}_{Path(args.model).stem}.json", payload)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
