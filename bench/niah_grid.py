"""Needle-in-a-haystack grid on the embedded model: full attention against GemFilter at several
k over lengths x depths x needles (one filter pass serves every --layers), with a selection
ablation; results in bench/results/, the heatmap in docs/gemfilter-niah.png (--report).

    python bench/niah_grid.py [--layers 14,17] [--topks 256,512,1024] [--units token,sentence]
    python bench/niah_grid.py --report [--out niah-grid.json]   # heatmap + calibration curves

The grid uses needles 3-5, which the calibration never saw.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.filter import layer_scores
from sepcli.gemfilter.pipeline import prepare
from sepcli.gemfilter.selection import choose_positions, top_tokens

from common import (
    DOCS,
    RESULTS,
    answer,
    case_done,
    int_list,
    judge,
    model_env,
    needle_grid,
    niah_parser,
    niah_start,
    plot_calibration_curves,
)


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


def cmd_report(args) -> None:
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
    plot_calibration_curves()


def main() -> None:
    p = niah_parser(__doc__)
    p.add_argument("--report", action="store_true", help="only the heatmap of --out")
    p.add_argument(
        "--layers",
        type=int_list,
        default=None,
        help="comma-separated filter layers (one shared pass)",
    )
    p.add_argument("--topks", type=int_list, default="256,512,1024")
    p.add_argument("--units", default="token", help="token,sentence (what top-k keeps)")
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    if args.report:
        niah_start(args, load=False)
        cmd_report(args)
    else:
        cmd_grid(args, niah_start(args))


if __name__ == "__main__":
    main()
