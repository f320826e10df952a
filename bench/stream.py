"""Benchmarks of the streaming engine (numbers in docs/stream.md come from here).

    python bench/stream.py throughput [--tokens 4000] [--chunk 32,64,128,224] [--segment 896]
    python bench/stream.py quality    [--tokens 8000] [--plot docs/stream_ppl.png] [--bos-per-line]
                                      [--separators sepcli|reference]
    python bench/stream.py chunking   [--tokens 2000]
    python bench/stream.py frontier   [--tokens 20000] [--capacities 160,...] [--plot PNG]
    python bench/stream.py memory     [--tokens 500000] [--marks 20000,500000]

All runs use the embedded SmolLM2-135M-Instruct (bf16 on a CPU with AMX, as `sepcli stream`
does by default; `--model` takes anything `sepcli --model` does) and the bundled essays.
Ratios are measured side by side in one process.
Set OMP_NUM_THREADS to pin the thread count (we used 1 on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sepcli.memory import peak_rss_mb, rss_mb
from sepcli.models import load_model
from sepcli.separators import SEPARATOR_CHARS, separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine

from common import essay_ids, model_env, pin_threads, timed_feed

pin_threads()


def reference_separator_mask(tok) -> torch.Tensor:
    """Separators as the official SepLLM code hard-codes them: only the ids of the single
    separator characters (the same set as sepcli's rule) and of their space-prefixed variants
    " ." etc., where each is one token; merged runs such as "\n\n" or ".\n" are not separators
    (sepcli's rule counts them)."""
    mask = torch.zeros(len(tok), dtype=torch.bool)
    chars = sorted(SEPARATOR_CHARS)
    strings = chars + [" " + ch for ch in chars if ch != " "]
    for text in strings:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            mask[ids[0]] = True
    return mask


def engine_run(lm, seps, ids, cfg) -> tuple[torch.Tensor, float, list]:
    """-> per-token NLL [n-1], seconds, piece stats."""
    engine = StreamEngine(lm.model, cfg, seps)
    t0 = time.perf_counter()
    stats = list(engine.run([ids]))
    dt = time.perf_counter() - t0
    return torch.cat([s.nll for s in stats]), dt, stats


def config_run(lm, seps, ids, method: str, sizes: dict, chunk: int):
    """One quality configuration (chunk capped at its window) -> per-token NLL [n-1], seconds,
    and the average number of cache entries each token attended to."""
    cfg = StreamConfig(method=method, chunk=min(chunk, sizes.get("window", 224)), **sizes)
    nll, dt, stats = engine_run(lm, seps, ids, cfg)
    avg_cache = sum(s.cache_mean * s.tokens for s in stats) / sum(s.tokens for s in stats)
    return nll, dt, avg_cache


@torch.inference_mode()
def hf_chunks(lm, ids, chunk) -> float:
    """Plain HF forward over the same tokens in chunks, no cache, with ``labels`` so that it
    scores the tokens as the engine does (HF upcasts the logits to fp32 for its loss): the
    compute floor of perplexity evaluation at that chunk size."""
    t0 = time.perf_counter()
    for i in range(0, len(ids), chunk):
        x = torch.tensor([ids[i : i + chunk]])
        lm.model(x, labels=x, use_cache=False)
    return time.perf_counter() - t0


@torch.inference_mode()
def hf_token_loop(lm, ids, cache) -> float:
    """One token per forward with HF's KV cache, as the official SepLLM and StreamingLLM
    evaluations loop."""
    t0 = time.perf_counter()
    for tok in ids:
        lm.model(torch.tensor([[tok]]), cache=cache, use_cache=True)
    return time.perf_counter() - t0


def throughput(args, lm, seps) -> dict:
    """Interleaved rounds (engine and HF no-cache forwards at each chunk size, token loops) on
    the same tokens, so that load changes on a shared machine hit every contender alike."""
    from transformers import DynamicCache

    ids = essay_ids(lm.tokenizer, args.tokens)
    chunks = [int(c) for c in str(args.chunk).split(",")]
    engines = {c: StreamEngine(lm.model, StreamConfig(chunk=c), seps) for c in chunks}
    engine1 = StreamEngine(lm.model, StreamConfig(chunk=1), seps)
    cache = DynamicCache()
    for engine in engines.values():
        timed_feed(engine, ids[:400])  # warm up, and fill the cache to its steady state
    seg, loop_n = args.segment, args.loop_tokens
    t = {f"engine_chunk{c}": 0.0 for c in chunks}
    t.update({f"hf_chunk{c}": 0.0 for c in chunks})
    t.update({"token_loop": 0.0, "engine_chunk1": 0.0})
    n = n_loop = 0
    for i in range(400, len(ids) - seg + 1, seg):
        part = ids[i : i + seg]
        for c in chunks:
            t[f"engine_chunk{c}"] += timed_feed(engines[c], part)
            t[f"hf_chunk{c}"] += hf_chunks(lm, part, c)
        t["token_loop"] += hf_token_loop(lm, part[:loop_n], cache)
        t["engine_chunk1"] += timed_feed(engine1, part[:loop_n])
        n, n_loop = n + seg, n_loop + loop_n
    res = {"tokens": n, "loop_tokens": n_loop}
    for k, v in t.items():
        res[f"{k}_tok_s"] = (n_loop if k in ("token_loop", "engine_chunk1") else n) / v
    for c in chunks:
        res[f"chunk{c}_ratio_vs_hf"] = res[f"engine_chunk{c}_tok_s"] / res[f"hf_chunk{c}_tok_s"]
        res[f"chunk{c}_ratio_vs_token_loop"] = (
            res[f"engine_chunk{c}_tok_s"] / res["token_loop_tok_s"]
        )
    return res


QUALITY_CONFIGS = [  # (capacity, label, method, sizes): the paper's configurations
    (324, "sepllm s=64", "sepllm", dict(init=4, sep=64, window=224, capacity=324)),
    (324, "sepllm s=32", "sepllm", dict(init=4, sep=32, window=224, capacity=324)),
    (324, "streamingllm", "streamingllm", dict(init=4, capacity=324)),
    (324, "window", "window", dict(capacity=324)),
    (800, "sepllm s=64", "sepllm", dict(init=4, sep=64, window=256, capacity=800)),
    (800, "sepllm s=32", "sepllm", dict(init=4, sep=32, window=256, capacity=800)),
    (800, "streamingllm", "streamingllm", dict(init=4, capacity=800)),
    (800, "window", "window", dict(capacity=800)),
]


def quality(args, lm, seps) -> dict:
    ids = essay_ids(lm.tokenizer, args.tokens, args.text, args.bos_per_line)
    scored = torch.ones(len(ids) - 1, dtype=torch.bool)
    if args.bos_per_line:  # as the official code: BOS is kept as a separator, never a target
        bos = lm.tokenizer.bos_token_id
        seps = seps.clone()
        seps[bos] = True
        scored = torch.tensor(ids[1:]) != bos
    out = {"separator_fraction": float(seps[torch.tensor(ids)].float().mean())}
    curves = {}
    for c, label, method, sizes in QUALITY_CONFIGS:
        if args.capacities and c not in args.capacities:
            continue
        nll, dt, avg_cache = config_run(lm, seps, ids, method, sizes, args.chunk)
        nll = nll[scored]
        key = f"{label}@{c}"
        out[key] = {"ppl": math.exp(nll.mean()), "avg_cache": avg_cache, "tok_s": len(ids) / dt}
        if c == min(args.capacities or [324]) and label in (
            "sepllm s=64",
            "streamingllm",
            "window",
        ):
            curves[label] = torch.exp(
                torch.cumsum(nll.double(), 0) / torch.arange(1, nll.numel() + 1)
            )
        print(json.dumps({key: out[key]}), flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for method, curve in curves.items():
            ax.plot(range(1, curve.numel() + 1), curve.numpy(), label=method)
        ax.set_xlabel("tokens")
        ax.set_ylabel("running perplexity")
        ax.set_ylim(bottom=0, top=float(max(c[200:].max() for c in curves.values())) * 1.1)
        ax.set_title(f"{args.model_name}, {Path(args.text).stem}, capacity 324 (a=4 s=64 w=224)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return out


def frontier(args, lm, seps) -> dict:
    """Perplexity against *average* cache size: the paper's SepLLM configurations, and
    StreamingLLM at a sweep of capacities that brackets their averages, on the same tokens.
    SepLLM's cache oscillates between a+s+w and c, so at the same c it attends to fewer
    entries; this compares the methods at equal average budget instead."""
    ids = essay_ids(lm.tokenizer, args.tokens, args.text)
    caps = args.capacities or [160, 240, 290, 306, 324, 400, 480, 540, 555, 640, 800]
    runs = [
        (label, method, sizes) for c, label, method, sizes in QUALITY_CONFIGS if method == "sepllm"
    ]
    runs += [("streamingllm", "streamingllm", dict(init=4, capacity=c)) for c in caps]
    methods = args.methods.split(",")
    runs = [run for run in runs if run[1] in methods]
    rows = []
    for label, method, sizes in runs:
        nll, _, avg_cache = config_run(lm, seps, ids, method, sizes, args.chunk)
        row = {
            "label": f"{label} c={sizes['capacity']}",
            "method": method,
            **sizes,
            "ppl": math.exp(nll.mean()),
            "avg_cache": avg_cache,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        sl = [r for r in rows if r["method"] == "streamingllm"]
        ax.plot([r["avg_cache"] for r in sl], [r["ppl"] for r in sl], "o-", label="streamingllm")
        for r in rows:
            if r["method"] == "sepllm":
                ax.plot(r["avg_cache"], r["ppl"], "s", label=r["label"])
        ax.set_xlabel("average KV entries attended per token")
        ax.set_ylabel("perplexity")
        ax.set_title(f"{args.model_name}, {Path(args.text).stem}, {len(ids) - 1} tokens")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
    return {"text": args.text, "tokens": len(ids) - 1, "rows": rows}


def chunking(args, lm, seps) -> dict:
    """Perplexity of chunk 1 vs the default chunk for each method (c=324)."""
    ids = essay_ids(lm.tokenizer, args.tokens)
    out = {}
    for method in args.methods.split(","):
        ppl = {}
        for chunk in (1, args.chunk):
            nll, _, _ = engine_run(lm, seps, ids, StreamConfig(method=method, chunk=chunk))
            ppl[chunk] = math.exp(nll.mean())
        out[method] = {
            "ppl_chunk1": ppl[1],
            f"ppl_chunk{args.chunk}": ppl[args.chunk],
            "rel_diff": (ppl[args.chunk] - ppl[1]) / ppl[1],
        }
        print(json.dumps({method: out[method]}), flush=True)
    return out


def memory(args, lm, seps) -> dict:
    """RSS at token marks of one long run (current and peak)."""
    ids_block = essay_ids(lm.tokenizer, 150_000)[1:]
    marks = sorted(int(m) for m in args.marks.split(","))
    engine = StreamEngine(lm.model, StreamConfig(chunk=args.chunk), seps)

    def blocks():
        yield [lm.tokenizer.bos_token_id]
        sent = 0
        while sent < args.tokens:
            yield ids_block[: args.tokens - sent]
            sent += len(ids_block)

    out, i = {}, 0
    for piece in engine.run(blocks()):
        while i < len(marks) and piece.seen >= marks[i]:
            out[marks[i]] = {"rss_mb": rss_mb(), "peak_rss_mb": peak_rss_mb()}
            print(json.dumps({marks[i]: out[marks[i]]}), flush=True)
            i += 1
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "what",
        nargs="?",
        default="throughput",
        choices=["throughput", "quality", "chunking", "memory", "frontier"],
    )
    parser.add_argument("--tokens", type=int, default=None)
    parser.add_argument(
        "--chunk",
        default=str(StreamConfig().chunk),
        help="chunk size (throughput: a comma-separated list is measured side by side)",
    )
    parser.add_argument("--plot", default=None)
    parser.add_argument(
        "--capacities",
        default="",
        help="quality: only these capacities (e.g. 324); frontier: StreamingLLM's capacities",
    )
    parser.add_argument(
        "--text",
        default="essays",
        help="quality, frontier: 'essays' or a UTF-8 text file (make bench-data)",
    )
    parser.add_argument(
        "--bos-per-line",
        action="store_true",
        help="quality: the official SepLLM evaluation's protocol (each line with its own BOS, "
        "kept as a separator)",
    )
    parser.add_argument(
        "--separators",
        default="sepcli",
        choices=["sepcli", "reference"],
        help="the separator table of every run: sepcli's rule (any token made only of "
        "separator characters) or the official SepLLM code's hard-coded list",
    )
    parser.add_argument("--marks", default="20000,500000")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--model", default="smollm2", help="as `sepcli --model`")
    parser.add_argument(
        "--methods",
        default="sepllm,streamingllm,window",
        help="chunking, frontier: methods to run",
    )
    parser.add_argument(
        "--segment",
        type=int,
        default=896,
        help="throughput: tokens per round (a multiple of each chunk)",
    )
    parser.add_argument(
        "--loop-tokens", type=int, default=16, help="throughput: token-loop tokens per round"
    )
    args = parser.parse_args()
    args.tokens = (
        args.tokens
        or {
            "throughput": 4000,
            "quality": 8000,
            "chunking": 2000,
            "memory": 500_000,
            "frontier": 20_000,
        }[args.what]
    )
    if args.what != "throughput":
        args.chunk = int(args.chunk)
    args.capacities = [int(c) for c in args.capacities.split(",") if c]
    lm = load_model(args.model, dtype=args.dtype)
    args.model_name = "SmolLM2-135M" if args.model == "smollm2" else lm.name
    if args.separators == "reference":
        seps = reference_separator_mask(lm.tokenizer)
    else:
        seps = separator_mask(lm.tokenizer)
    fn = {
        "throughput": throughput,
        "quality": quality,
        "chunking": chunking,
        "memory": memory,
        "frontier": frontier,
    }[args.what]
    result = {
        "bench": args.what,
        **model_env(lm),
        "separators": args.separators,
        **fn(args, lm, seps),
    }
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
