"""GemFilter benchmarks on the embedded model: calibration curve, needle-in-a-haystack grid,
and time-to-first-token / peak memory at the longest context. Results go to bench/results/,
the heatmap to docs/.

    python bench/niah.py calibrate            # accuracy per filter layer (also stores the choice)
    python bench/niah.py grid                 # full vs gemfilter k=256/512/1024 over lengths x depths x needles
    python bench/niah.py speed                # TTFT + peak memory, gemfilter vs full, one run
    python bench/niah.py ttft                 # the same, each variant in a fresh process, ratios vs full
    python bench/niah.py plot                 # heatmap PNG from the grid results
    python bench/niah.py long                 # documents 1.5-8x the context: split GemFilter vs truncation

The grid uses needles the calibration never saw (calibration: needles 0-2; grid: 3-5), so the
chosen layer is not tuned on the test cases. All runs: CPU, 2 threads, model dtype auto (bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.filter import layer_scores
from sepcli.gemfilter.generate import answer_pieces
from sepcli.gemfilter.needles import NEEDLES, make_grid
from sepcli.gemfilter.pipeline import answer_text, prepare, segments_for
from sepcli.gemfilter.segments import split_scores
from sepcli.gemfilter.selection import choose_positions, sentence_units, top_spans, top_tokens
from sepcli.memory import PeakMemory
from sepcli.models import load_model

from common import (
    DOCS,
    RESULTS,
    add_case_options,
    case_done,
    command,
    int_list,
    machine,
    model_env,
    needle_grid,
    until_correct,
    write_result,
)


def answer(lm, ids: torch.Tensor, max_new: int, case) -> str:
    """Greedy answer to prompt ``ids`` [n], as ``sepcli ask`` decodes it, read until correct."""
    return until_correct(answer_pieces(lm.model, lm.tokenizer, ids, max_new), case)


def judge(lm, case, prompt, idx: torch.Tensor, max_new: int) -> dict:
    """Answer from the kept positions ``idx``; correct, answer, needle recall, tokens kept."""
    ans = answer(lm, prompt.ids[idx], max_new, case)
    return {
        "correct": case.is_correct(ans),
        "answer": ans,
        "recall": case.recall(prompt, idx.tolist()),
        "kept": idx.numel(),
    }


def _two_round(lm, prompt, scores, layer: int, window: int, k: int, factor: int, keep):
    """A second filter round over split scores. Round 1 keeps whole sentences worth ``factor * k``
    tokens by their segment scores. Round 2 runs one filter pass over the template, those
    sentences and the question, so every candidate is scored in one softmax, and keeps k
    tokens of whole sentences by those scores. Returns (kept positions, round-2 seconds)."""
    t0 = time.perf_counter()
    first = choose_positions(prompt, scores, factor * k, "sentence", 1, keep)
    device = next(lm.model.parameters()).device
    ((_, again),) = list(
        layer_scores(lm.model, prompt.ids[first][None].to(device), [layer], window)
    )
    rescored = torch.full((prompt.n,), float("-inf"))
    rescored[first] = again[0].float().cpu()
    inside = set(first.tolist())
    units = [
        (a, b) for a, b in sentence_units(prompt, True, k) if all(i in inside for i in range(a, b))
    ]
    return top_spans(rescored, units, k, keep=keep), time.perf_counter() - t0


def cmd_calibrate(args, lm) -> None:
    shape_ctx = lm.model.config.max_position_embeddings
    lengths = args.lengths
    cases = cal.calibration_cases(lm.tokenizer, shape_ctx, lengths=lengths, needles=args.needles)
    curve = None
    window = None if args.window == "question" else int(args.window)
    unit = args.units.split(",")[0]
    scored = cal.measure(
        lm.model, lm.tokenizer, cases, topk=args.topk, window=window, smooth=args.smooth, unit=unit
    )
    for ev in scored:
        if isinstance(ev, cal.Progress):
            print(f"case {ev.done}/{ev.total}", file=sys.stderr, flush=True)
        else:
            curve = ev
    path = None if args.no_save else cal.save(lm.name, lm.source, curve)
    write_result(
        args.out or "niah-calibration.json",
        {
            "command": command(),
            "env": model_env(lm),
            "lengths": lengths or cal.default_lengths(shape_ctx),
            "depths": list(cal.DEFAULT_DEPTHS),
            "needles": args.needles,
            "topk": curve.topk,
            "unit": unit,
            "cases": curve.cases,
            "chosen_layer": curve.best(),
            "accuracy": [curve.accuracy(r) for r in range(curve.layers)],
            "recall": [curve.recall(r) for r in range(curve.layers)],
            "stored_at": str(path) if path else None,
        },
    )
    if args.plot:
        _plot_curves()


def _plot_curves() -> None:
    """Hit rate per layer for each stored calibration run (query window 'question' vs 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for path in sorted(RESULTS.glob("niah-calibration*.json")):
        d = json.loads(path.read_text())
        xs = list(range(len(d["accuracy"])))
        label = f"window={d.get('window', 1)}: hit rate (best layer {d['chosen_layer']})"
        ax.plot(xs, d["accuracy"], marker="o", label=label)
    ax.set_xlabel("filter layer (0-based)")
    ax.set_ylabel(">= 50% of needle in top-k")
    ax.set_ylim(0, 1.05)
    ax.set_title(
        f"SmolLM2-135M-Instruct calibration (top-{d['topk']}, {d['cases']} cases)", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "gemfilter-calibration.png", dpi=110)


def cmd_grid(args, lm) -> None:
    lengths, needles, cases = needle_grid(lm, args)
    if args.layers:
        layers = args.layers
    elif args.layer is not None:
        layers = [args.layer]
    else:
        layers = [cal.auto_layer(lm.model, lm.name, lm.source)[0]]
    ks = args.topks
    variants = [(s, p) for s in (1, 5) for p in (False, True)]  # selection-only ablation
    units = args.units.split(",")
    rows = []
    out_name = args.out or "niah-grid.json"
    device = next(lm.model.parameters()).device
    for case in cases:
        row = {"length": case.length_tokens, "depth": case.depth, "needle": case.needle.answer}
        cfg = QAConfig(
            method="gemfilter", layer=max(layers), topk=max(ks), max_new_tokens=args.max_new_tokens
        )
        prompt = prepare(lm.model, lm.tokenizer, case.document, case.question, cfg)
        if not args.skip_full:
            ans = answer(lm, prompt.ids, args.max_new_tokens, case)
            row["full"] = {"correct": case.is_correct(ans), "answer": ans}
        # one filter pass serves every layer asked for (it stops at the highest)
        t0 = time.perf_counter()
        window = prompt.window(cfg.window)
        per_layer = {
            r: sc[0].float().cpu()
            for r, sc in layer_scores(lm.model, prompt.ids[None].to(device), layers, window)
        }
        row["filter_s"] = time.perf_counter() - t0
        row["prompt_tokens"] = prompt.n
        doc_mask = prompt.document_mask()
        for layer in layers:
            scores = per_layer[layer]
            for k in ks:
                ablation = {}
                for smooth, protect in variants:
                    idx = top_tokens(scores, k, smooth=smooth, keep=~doc_mask if protect else None)
                    ablation[f"smooth{smooth}-protect{int(protect)}"] = case.recall(
                        prompt, idx.tolist()
                    )
                for unit in units:
                    keep = ~doc_mask if cfg.protect else None
                    idx = choose_positions(prompt, scores, k, unit, cfg.smooth, keep)
                    name = f"gemfilter{k}" if len(layers) == 1 else f"gemfilter{k}-L{layer}"
                    name += "" if len(units) == 1 else f"-{unit}"
                    row[name] = judge(lm, case, prompt, idx, args.max_new_tokens)
                    if unit == "token":
                        row[name]["recall"] = ablation
        case_done(
            out_name,
            rows,
            row,
            {
                "env": model_env(lm),
                "layer": layers[0] if len(layers) == 1 else layers,
                "layers": layers,
                "smooth": cfg.smooth,
                "protect": cfg.protect,
                "topks": ks,
                "lengths": lengths,
                "depths": args.depths,
                "needles": [n.answer for n in needles],
                "max_new_tokens": args.max_new_tokens,
            },
        )


def cmd_speed(args, lm) -> None:
    ctx = lm.model.config.max_position_embeddings
    length = args.length or ctx - 192
    case = make_grid(lm.tokenizer, [length], [0.5], NEEDLES[3:4])[0]
    layer = (
        args.layer if args.layer is not None else cal.auto_layer(lm.model, lm.name, lm.source)[0]
    )
    runs = []
    for rep in range(args.repeats):
        for method in args.methods.split(","):
            cfg = QAConfig(
                method=method,
                layer=layer,
                topk=args.topk,
                max_new_tokens=args.max_new_tokens,
                segment_tokens=(args.segment_tokens or None) if method == "gemfilter" else None,
                unit=args.units.split(",")[0],
            )
            r = answer_text(lm.model, lm.tokenizer, case.document, case.question, cfg)
            runs.append({"rep": rep, **r.as_dict()})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    write_result(
        args.out or f"niah-speed-{args.methods.replace(',', '-')}-layer{layer}.json",
        {
            "command": command(),
            "env": model_env(lm),
            "length": length,
            "layer": layer,
            "topk": args.topk,
            "segment_tokens": args.segment_tokens or "fit",
            "unit": args.units.split(",")[0],
            "runs": runs,
        },
    )


def cmd_ttft(args, lm=None) -> None:
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
                cmd = [sys.executable, __file__, "speed", "--model", args.model]
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


def cmd_long(args, lm) -> None:
    """Documents longer than the context. GemFilter filters them segment by segment (one pass
    per segment serves every k); the baseline a user has without it is to cut the document to
    what fits: full attention over the template, the *last* document tokens that fit, and the
    question (``truncate``)."""
    ctx = lm.model.config.max_position_embeddings
    lengths, needles, cases = needle_grid(lm, args, [ctx * 3 // 2, ctx * 2, ctx * 4, ctx * 8])
    layer = (
        args.layer if args.layer is not None else cal.auto_layer(lm.model, lm.name, lm.source)[0]
    )
    ks = args.topks
    sizes = [x or None for x in args.segment_sizes]  # 0 = all that fit
    units = args.units.split(",")
    factors = args.two_round
    rows = []
    out_name = args.out or "niah-long.json"
    device = next(lm.model.parameters()).device
    for case in cases:
        cfg = QAConfig(layer=layer, topk=max(ks), max_new_tokens=args.max_new_tokens)
        prompt = prepare(lm.model, lm.tokenizer, case.document, case.question, cfg)
        row = {
            "length": case.length_tokens,
            "depth": case.depth,
            "needle": case.needle.answer,
            "prompt_tokens": prompt.n,
        }
        keep = ~prompt.document_mask()
        for size in sizes:
            tag = "" if len(sizes) == 1 else f"-s{size or 'fit'}"
            bounds = segments_for(lm.model, prompt, size)
            with PeakMemory(device) as mem:
                t0 = time.perf_counter()
                scores = split_scores(lm.model, prompt, layer, prompt.window(cfg.window), bounds)
                row[f"filter_s{tag}"] = time.perf_counter() - t0
            row[f"segments{tag}"] = len(bounds)
            row[f"filter_peak_mem_bytes{tag}"] = mem.peak_bytes
            for k in ks:
                for unit in units:
                    idx = choose_positions(prompt, scores, k, unit, cfg.smooth, keep)
                    name = f"gemfilter{k}{tag}" + ("" if len(units) == 1 else f"-{unit}")
                    row[name] = judge(lm, case, prompt, idx, args.max_new_tokens)
                for factor in factors if len(bounds) > 1 else []:
                    idx, spent = _two_round(
                        lm, prompt, scores, layer, prompt.window(cfg.window), k, factor, keep
                    )
                    name = f"gemfilter{k}{tag}-2r{factor}"
                    row[name] = judge(lm, case, prompt, idx, args.max_new_tokens)
                    row[name]["round2_s"] = spent
        if not args.skip_full:
            fixed = prompt.n - prompt.doc_len
            tail_start = max(prompt.doc_start, prompt.doc_end - (ctx - fixed))
            # template head + last document tokens that fit + question
            idx = torch.cat([torch.arange(prompt.doc_start), torch.arange(tail_start, prompt.n)])
            row["truncate"] = judge(lm, case, prompt, idx, args.max_new_tokens)
        case_done(
            out_name,
            rows,
            row,
            {
                "env": model_env(lm),
                "context": ctx,
                "layer": layer,
                "smooth": cfg.smooth,
                "topks": ks,
                "segment_sizes": [s or "fit" for s in sizes],
                "two_round_factors": factors,
                "units": units,
                "lengths": lengths,
                "depths": args.depths,
                "needles": [n.answer for n in needles],
                "max_new_tokens": args.max_new_tokens,
            },
        )


def cmd_plot(args, lm=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads((RESULTS / (args.out or "niah-grid.json")).read_text())
    rows = data["rows"]
    methods = [m for m in rows[0] if m == "full" or m.startswith("gemfilter")]
    lengths, depths = data["lengths"], data["depths"]
    # One depth: one row per needle instead (a 1-row heatmap says little).
    ykey, ys = ("depth", depths) if len(depths) > 1 else ("needle", data["needles"])
    ncols = min(4, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[len(methods) :]:
        ax.axis("off")
    for ax, m in zip(axes.flat, methods, strict=False):  # extra axes were switched off
        grid = torch.zeros(len(ys), len(lengths))
        count = torch.zeros_like(grid)
        for row in rows:
            i, j = ys.index(row[ykey]), lengths.index(row["length"])
            grid[i, j] += float(row[m]["correct"])
            count[i, j] += 1
        acc = grid / count.clamp(min=1)
        ax.imshow(acc.numpy(), vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
        for i in range(len(ys)):
            for j in range(len(lengths)):
                ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(lengths)), [str(x) for x in lengths], fontsize=7)
        ylabels = [f"{d:.0%}" for d in ys] if ykey == "depth" else [str(y) for y in ys]
        ax.set_yticks(range(len(ys)), ylabels, fontsize=7)
        ax.set_xlabel("context tokens", fontsize=8)
        ax.set_title(f"{m}: {sum(r[m]['correct'] for r in rows) / len(rows):.2f}", fontsize=9)
    axes[0][0].set_ylabel(f"needle ({ykey})" if ykey == "needle" else "needle depth", fontsize=8)
    DOCS.mkdir(exist_ok=True)
    fig.savefig(DOCS / "gemfilter-niah.png", dpi=110)
    print(f"wrote {DOCS / 'gemfilter-niah.png'}", file=sys.stderr)
    _plot_curves()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["calibrate", "grid", "speed", "ttft", "plot", "long"])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="auto", help="as `sepcli --dtype` (auto, fp32, int8, ...)")
    add_case_options(p, max_new_tokens=16)
    p.add_argument(
        "--layer", type=int, default=None, help="0-based filter layer (default: calibrated)"
    )
    p.add_argument(
        "--layers",
        type=int_list,
        default=None,
        help="grid: comma-separated filter layers (one shared pass)",
    )
    p.add_argument("--topk", type=int, default=cal.DEFAULT_CALIBRATION_TOPK)
    p.add_argument("--topks", type=int_list, default="256,512,1024")
    p.add_argument("--length", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--methods",
        default="full,gemfilter",
        help="speed: methods in run order (one per process is fairest on CPU)",
    )
    p.add_argument("--skip-full", action="store_true")
    p.add_argument(
        "--segment-sizes",
        type=int_list,
        default="0",
        help="long: document tokens per filter pass (0 = fit)",
    )
    p.add_argument(
        "--units",
        default="token",
        help="grid, long: token,sentence (what top-k keeps); speed, calibrate: the first",
    )
    p.add_argument(
        "--segment-tokens",
        type=int,
        default=0,
        help="speed: gemfilter's --segment-tokens (0 = fit)",
    )
    p.add_argument(
        "--variants",
        default="full,gemfilter/1024/sentence/0,gemfilter/1024/sentence/2048",
        help="ttft: full,gemfilter/K/UNIT/SEGMENT_TOKENS,... (full first: the baseline)",
    )
    p.add_argument("--rounds", type=int, default=2, help="ttft: runs of every variant, in turn")
    p.add_argument("--plot", action="store_true")
    p.add_argument(
        "--two-round",
        type=int_list,
        default="",
        help="long: also a second filter round over whole sentences worth F*k tokens (F list)",
    )
    p.add_argument(
        "--no-save",
        action="store_true",
        help="calibrate: do not store the choice in the user cache",
    )
    p.add_argument("--window", default="question", help="'question' or a number of last tokens")
    p.add_argument("--smooth", type=int, default=1, help="calibration score smoothing width")
    p.add_argument(
        "--out",
        default=None,
        help="results file name under bench/results/ (grid, calibrate, speed)",
    )
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.what == "plot":
        return cmd_plot(args)
    if args.what == "ttft":
        return cmd_ttft(args)
    lm = load_model(args.model, dtype=args.dtype)
    commands = {"calibrate": cmd_calibrate, "grid": cmd_grid, "speed": cmd_speed, "long": cmd_long}
    commands[args.what](args, lm)


if __name__ == "__main__":
    main()
