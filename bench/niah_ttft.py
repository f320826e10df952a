"""Time to first token and peak memory of several variants, each run by bench/niah_speed.py in
its own fresh process, --rounds times in turn; medians as ratios to full attention.

    python bench/niah_ttft.py [--variants full,gemfilter/1024/sentence/0] [--rounds 2]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import (
    ROOT,
    add_one_case_options,
    command,
    machine,
    niah_parser,
    niah_start,
    write_result,
)

SPEED = ROOT / "bench" / "niah_speed.py"


def cmd_ttft(args) -> None:
    """TTFT and peak memory of several variants side by side, each run in its own fresh process
    (on CPU the peak is RSS growth, and glibc keeps freed memory, so runs sharing a process
    distort each other), ``--rounds`` times in turn; prints the medians as ratios to ``full``.
    A variant is ``full`` or ``gemfilter/K/UNIT/SEGMENT_TOKENS`` (0 = as many as fit)."""
    variants = args.variants.split(",")
    if variants[0] != "full":
        raise SystemExit("--variants must start with full (the baseline of the ratios)")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for v in variants:
                method, *rest = v.split("/")
                k, unit, seg = rest if rest else (args.topk, "token", 0)
                out = Path(tmp) / f"{rnd}-{len(runs[v])}-{method}.json"
                cmd = [sys.executable, str(SPEED), "--model", args.model]
                cmd += ["--threads", str(args.threads), "--methods", method, "--repeats", "1"]
                cmd += ["--dtype", args.dtype]
                cmd += ["--topk", str(k), "--units", unit, "--segment-tokens", str(seg)]
                cmd += ["--max-new-tokens", str(args.max_new_tokens), "--out", str(out)]
                cmd += [] if args.layer is None else ["--layer", str(args.layer)]
                cmd += [] if args.length is None else ["--length", str(args.length)]
                subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
                res = json.loads(out.read_text())
                runs[v].append({"round": rnd, **res["runs"][0]})
                r = runs[v][-1]
                print(
                    f"round {rnd} {v}: ttft {r['ttft_s']:.2f} s, peak {r['peak_mem_bytes'] / 2**20:.1f} MiB, "
                    f"{r['answer']!r}",
                    file=sys.stderr,
                    flush=True,
                )
    base_t = statistics.median(r["ttft_s"] for r in runs["full"])
    base_m = statistics.median(r["peak_mem_bytes"] for r in runs["full"])
    summary = []
    print("| variant | TTFT median (s) | vs full | peak growth median (MiB) | vs full | kept |")
    print("|---|---|---|---|---|---|")
    for v, rs in runs.items():
        t = statistics.median(r["ttft_s"] for r in rs)
        m = statistics.median(r["peak_mem_bytes"] for r in rs)
        row = {
            "variant": v,
            "ttft_s": t,
            "speedup": base_t / t,
            "peak_mem_bytes": m,
            "mem_ratio": m / base_m,
            "selected_tokens": rs[0]["selected_tokens"],
            "segments": rs[0]["segments"],
        }
        summary.append(row)
        print(
            f"| {v} | {t:.2f} | {row['speedup']:.2f}x faster | {m / 2**20:.1f} | "
            f"{row['mem_ratio']:.2f}x | {row['selected_tokens']} |"
        )
    write_result(
        args.out or "niah-ttft.json",
        {
            "command": command(),
            "env": machine(),
            "summary": summary,
            "runs": runs,
        },
    )


def main() -> None:
    p = niah_parser(__doc__)
    add_one_case_options(p)
    p.add_argument(
        "--variants",
        default="full,gemfilter/1024/sentence/0,gemfilter/1024/sentence/2048",
        help="full,gemfilter/K/UNIT/SEGMENT_TOKENS,... (full first: the baseline)",
    )
    p.add_argument("--rounds", type=int, default=2, help="runs of every variant, in turn")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    niah_start(args, load=False)
    cmd_ttft(args)


if __name__ == "__main__":
    main()
