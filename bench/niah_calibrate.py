"""Filter-layer calibration on the embedded model: needle hit rate per layer (also stores the
chosen layer for ``--layer auto`` unless --no-save); results in bench/results/, the curves in
docs/gemfilter-calibration.png (--plot).

    python bench/niah_calibrate.py [--lengths 1024,2048] [--needles 3] [--window question] [--plot]

The calibration uses needles 0-2; bench/niah_grid.py tests on 3-5, so the chosen layer is not
tuned on the test cases.
"""

from __future__ import annotations

import sys

from sepcli.gemfilter import calibrate as cal

from common import (
    command,
    model_env,
    niah_parser,
    niah_start,
    plot_calibration_curves,
    write_result,
)


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
        plot_calibration_curves()


def main() -> None:
    p = niah_parser(__doc__)
    p.add_argument("--topk", type=int, default=cal.DEFAULT_CALIBRATION_TOPK)
    p.add_argument("--units", default="token", help="what top-k keeps: token or sentence")
    p.add_argument("--window", default="question", help="'question' or a number of last tokens")
    p.add_argument("--smooth", type=int, default=1, help="calibration score smoothing width")
    p.add_argument(
        "--no-save", action="store_true", help="do not store the choice in the user cache"
    )
    p.add_argument("--plot", action="store_true", help="also draw the calibration curves")
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    cmd_calibrate(args, niah_start(args))


if __name__ == "__main__":
    main()
