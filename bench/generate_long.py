"""Tens of thousands of generated tokens far past the context, on one ring: speed, memory and
the cache, one JSON line per ``--every`` tokens, against a control decoder that stays near the
start of its text (numbers and plot in docs/generate.md).

    python bench/generate_long.py [--new-tokens 50000] [--dtype fp32] [--every 1000]
    python bench/generate_long.py --report     # summary + PNG from the JSON lines of a run

Set OMP_NUM_THREADS to pin the thread count (we used 1 on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sepcli.generate.decode import Decoder, GenerateConfig
from sepcli.generate.sampling import SamplingConfig
from sepcli.memory import peak_rss_mb, rss_mb
from sepcli.models import load_model
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig

from common import DOCS, RESULTS, essay_ids, machine, pin_threads

pin_threads()


def long_run(args) -> None:
    """Generate ``--new-tokens`` tokens with sepllm, one JSON line per ``--every`` tokens."""
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    cfg = StreamConfig(method=args.method)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    seps = separator_mask(lm.tokenizer)
    decoder = Decoder.on_ring(lm.model, lm.tokenizer, cfg, sampling, separators=seps)
    engine = decoder.engine
    prompt = essay_ids(lm.tokenizer, args.prompt_tokens)
    for _ in decoder.prefill([prompt]):
        pass
    # The control: a second decoder on its own ring, same prompt and config, that stays near
    # the start of its text. In the last --paired tokens of every block the two step in turn,
    # one token each, so the ratio of their rates is what the long one's position costs,
    # whatever else the machine runs.
    ref = Decoder.on_ring(lm.model, lm.tokenizer, cfg, sampling, separators=seps)
    ref_engine = ref.engine
    for _ in ref.prefill([prompt]):
        pass
    ref_steps = ref.decode(0, ignore_eos=True)  # 0: no limit
    for _ in range(100):  # past the point where its ring fills
        next(ref_steps)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = {
        "event": "start",
        "model": lm.name,
        "dtype": args.dtype,
        "config": cfg.to_dict(),
        "generate": GenerateConfig(args.new_tokens, ignore_eos=True, sampling=sampling).to_dict(),
        "prompt_tokens": args.prompt_tokens,
        "every": args.every,
        "paired": args.paired,
        "context_length": engine.shape.context_length,
        **machine(),
    }
    with out.open("w") as f:
        f.write(json.dumps(head) + "\n")
        f.flush()
        t0 = last = time.perf_counter()
        cpu_last = time.process_time()
        chars = 0
        t_long = t_ref = 0.0
        steps = decoder.decode(args.new_tokens, ignore_eos=True)
        for i in range(1, args.new_tokens + 1):
            paired = (i - 1) % args.every >= args.every - args.paired
            t = time.perf_counter()
            tok = next(steps)
            if paired:
                t1 = time.perf_counter()
                next(ref_steps)
                t_long, t_ref = t_long + t1 - t, t_ref + time.perf_counter() - t1
            chars += len(tok.text)
            if i % args.every == 0:
                now, cpu_now = time.perf_counter(), time.process_time()
                spent, cpu_spent = (
                    now - last - t_ref,
                    cpu_now - cpu_last - t_ref,
                )  # less the control's
                row = {
                    "tokens": i,
                    "tok_per_s": round(args.every / spent, 3),
                    # CPU seconds of this process: what the engine costs per token, whatever
                    # else runs on the machine (wall-clock rates follow the load)
                    "cpu_tok_per_s": round(args.every / cpu_spent, 3),
                    "elapsed_s": round(now - t0, 2),
                    "rss_mb": round(rss_mb(), 1),
                    "cache_used": engine.ring.used,
                    "seen": engine.seen,
                    "chars": chars,
                    # the paired tokens: this decoder and the control, stepping in turn
                    "paired_tok_per_s": round(args.paired / t_long, 3),
                    "control_tok_per_s": round(args.paired / t_ref, 3),
                    "control_seen": ref_engine.seen,
                }
                t_long = t_ref = 0.0
                f.write(json.dumps(row) + "\n")
                f.flush()
                last, cpu_last = now, cpu_now
        f.write(json.dumps({"event": "end", "peak_rss_mb": round(peak_rss_mb(), 1)}) + "\n")
    long_plot(args.out, args.plot)


def long_plot(results: str, plot: str) -> None:
    """Summary numbers and the PNG from the JSON lines of a run (also a partial one)."""
    rows = [json.loads(x) for x in Path(results).read_text().splitlines()]
    head = rows[0]
    marks = [r for r in rows if "tokens" in r]
    capacity = head["config"]["capacity"]
    # "after the cache fills": blocks whose every token ran with the ring at capacity once
    after = [r for r in marks if r["seen"] - head["every"] >= capacity] or marks
    first, lastr = after[0], marks[-1]
    rss = [r["rss_mb"] for r in after]
    summary = {
        "tokens": lastr["tokens"],
        "first_block_tok_per_s": first["tok_per_s"],
        "last_block_tok_per_s": lastr["tok_per_s"],
        "speed_ratio_last_over_first": round(lastr["tok_per_s"] / first["tok_per_s"], 3),
        **(
            {
                "first_block_cpu_tok_per_s": first["cpu_tok_per_s"],
                "last_block_cpu_tok_per_s": lastr["cpu_tok_per_s"],
                "cpu_speed_ratio_last_over_first": round(
                    lastr["cpu_tok_per_s"] / first["cpu_tok_per_s"], 3
                ),
            }
            if "cpu_tok_per_s" in first
            else {}
        ),
        **(
            {
                "first_block_paired_ratio": round(
                    first["paired_tok_per_s"] / first["control_tok_per_s"], 3
                ),
                "last_block_paired_ratio": round(
                    lastr["paired_tok_per_s"] / lastr["control_tok_per_s"], 3
                ),
                "paired_ratio_last_over_first": round(
                    (lastr["paired_tok_per_s"] / lastr["control_tok_per_s"])
                    / (first["paired_tok_per_s"] / first["control_tok_per_s"]),
                    3,
                ),
            }
            if "paired_tok_per_s" in first
            else {}
        ),
        "rss_first_mb": first["rss_mb"],
        "rss_last_mb": lastr["rss_mb"],
        "rss_max_over_min": round(max(rss) / min(rss), 4),
        "context_length": head["context_length"],
        "dtype": head["dtype"],
        "threads": head["threads"],
    }
    print(json.dumps(summary))
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [r["tokens"] for r in marks]
        fig, ax = plt.subplots(figsize=(8, 4))
        ax.plot(x, [r["tok_per_s"] for r in marks], color="tab:blue", label="tok/s (wall clock)")
        if "cpu_tok_per_s" in marks[0]:
            ax.plot(
                x,
                [r["cpu_tok_per_s"] for r in marks],
                color="tab:green",
                label="tok/s (per CPU second of this process)",
            )
        if "paired_tok_per_s" in marks[0]:
            ax.plot(
                x,
                [r["paired_tok_per_s"] / r["control_tok_per_s"] * 10 for r in marks],
                color="black",
                ls="--",
                label="x10: this run / control near the start, stepping in turn",
            )
        ax.set_xlabel("tokens generated")
        ax.set_ylabel("decode tokens/s (per 1,000)", color="tab:blue")
        ax.axvline(head["context_length"], color="gray", ls=":", label="model context (8K)")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(x, [r["rss_mb"] for r in marks], color="tab:red")
        ax2.set_ylabel("RSS MiB", color="tab:red")
        ax2.set_ylim(0, max(r["rss_mb"] for r in marks) * 1.2)
        ax.set_title(
            f"sepcli generate, {head['model']} {head['dtype']}, sepllm, capacity {capacity}, "
            f"{head['threads']} thread(s)"
        )
        ax.legend(loc="lower left")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--report", action="store_true", help="only the summary and the PNG of --out"
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--method", default="sepllm")
    parser.add_argument("--new-tokens", type=int, default=50_000)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument(
        "--paired", type=int, default=100, help="tokens per block timed against the control"
    )
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "generate-long.jsonl"))
    parser.add_argument("--plot", default=str(DOCS / "generate_long.png"))
    args = parser.parse_args()
    if args.report:
        long_plot(args.out, args.plot)
    else:
        long_run(args)


if __name__ == "__main__":
    main()
