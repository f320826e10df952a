"""Documents 1.5-8x the context on the embedded model: GemFilter filtering segment by segment
(optionally with a second round over whole sentences) against truncating the document to what
fits; results in bench/results/.

    python bench/niah_long.py [--lengths 1024,2048] [--segment-sizes 0,2048] [--topks 256,1024]
"""

from __future__ import annotations

import time

import torch

from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.filter import layer_scores
from sepcli.gemfilter.pipeline import prepare, segments_for
from sepcli.gemfilter.segments import split_scores
from sepcli.gemfilter.selection import choose_positions, sentence_units, top_spans
from sepcli.memory import PeakMemory

from common import case_done, int_list, judge, model_env, needle_grid, niah_parser, niah_start


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


def main() -> None:
    p = niah_parser(__doc__)
    p.add_argument("--topks", type=int_list, default="256,512,1024")
    p.add_argument("--units", default="token", help="token,sentence (what top-k keeps)")
    p.add_argument(
        "--segment-sizes",
        type=int_list,
        default="0",
        help="document tokens per filter pass (0 = fit)",
    )
    p.add_argument(
        "--two-round",
        type=int_list,
        default="",
        help="also a second filter round over whole sentences worth F*k tokens (F list)",
    )
    p.add_argument("--skip-full", action="store_true")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    cmd_long(args, niah_start(args))


if __name__ == "__main__":
    main()
