"""Time to first token and peak memory of one question at the longest context, GemFilter against
full attention, in one process (bench/niah_ttft.py runs each in its own); results in
bench/results/.

    python bench/niah_speed.py [--methods full,gemfilter] [--repeats 2] [--topk 1024]
"""

from __future__ import annotations

import json
import sys

from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.needles import NEEDLES, make_grid
from sepcli.gemfilter.pipeline import answer_text

from common import add_one_case_options, command, model_env, niah_parser, niah_start, write_result


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


def main() -> None:
    p = niah_parser(__doc__)
    add_one_case_options(p)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--methods",
        default="full,gemfilter",
        help="in run order (one per process is fairest on CPU)",
    )
    p.add_argument("--units", default="token", help="what top-k keeps: token or sentence")
    p.add_argument(
        "--segment-tokens", type=int, default=0, help="gemfilter's --segment-tokens (0 = fit)"
    )
    p.add_argument("--out", default=None, help="results file name under bench/results/")
    args = p.parse_args()
    cmd_speed(args, niah_start(args))


if __name__ == "__main__":
    main()
