"""kvpress's SnapKV on the same needle-in-a-haystack cases as ``bench/niah.py grid``.

kvpress is not a dependency of sepcli; this runs it from a separate folder on PYTHONPATH, next
to our transformers (kvpress 0.5.2 accepts transformers >= 4.56; 0.5.5 pins < 5.3):

    python -m pip install --target /tmp/kvsite --no-deps kvpress==0.5.2 \\
        "cachetools>=5.5.2,<6" "fire>=0.6,<0.7" termcolor six
    PYTHONPATH=/tmp/kvsite:bench/kvpress_shim python bench/niah_kvpress.py --budgets 256,1024

(``bench/kvpress_shim/datasets.py`` stands in for the ``datasets`` package, which kvpress imports
at module level for a press we do not use.)

SnapKV here sees the whole prompt, question included, like GemFilter: the prompt (document,
then question, chat template) is prefilled with the press, which keeps ``budget`` key/value
pairs per layer and head, scored by the attention of the tokens after the document (the
observation window); then the answer is decoded greedily from the compressed cache with the
original positions (as kvpress's own pipeline does). Same needles (3-5), lengths, depths and
correctness rule as the grid.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.niah import _env, _write  # noqa: E402
from sepcli.gemfilter.config import QAConfig  # noqa: E402
from sepcli.gemfilter.generate import stop_ids  # noqa: E402
from sepcli.gemfilter.needles import NEEDLES, make_grid  # noqa: E402
from sepcli.gemfilter.pipeline import prepare  # noqa: E402
from sepcli.models import load_model  # noqa: E402


def compatible(press_cls):
    """kvpress 0.5.2's hook reads ``cache_position`` from the attention kwargs, which
    transformers 5.x no longer passes. We only ever prefill once, from an empty cache, under the
    press, so the positions are 0..q_len-1; everything else is kvpress's own code."""

    class Press(press_cls):
        def forward_hook(self, module, input, kwargs, output):
            if "cache_position" not in kwargs:
                q_len = kwargs["hidden_states"].shape[1]
                kwargs = {**kwargs, "cache_position": torch.arange(q_len)}
            return super().forward_hook(module, input, kwargs, output)

    return Press


@torch.inference_mode()
def snapkv_answer(lm, press_cls, ids: torch.Tensor, budget: int, window: int, max_new: int, case):
    """Prefill ``ids`` [n] under SnapKV keeping ``budget`` entries, then greedy decoding."""
    from transformers import DynamicCache

    n = ids.numel()
    ratio = max(0.0, 1.0 - budget / n)
    press = press_cls(compression_ratio=ratio, window_size=min(window, n - 1))
    cache = DynamicCache()
    with press(lm.model):
        out = lm.model(ids[None], past_key_values=cache, use_cache=True)
    stop = stop_ids(lm.model, lm.tokenizer)
    tok = int(out.logits[0, -1].argmax())
    new: list[int] = []
    for i in range(max_new):
        if tok in stop:
            break
        new.append(tok)
        text = lm.tokenizer.decode(new, skip_special_tokens=True)
        if case.is_correct(text):
            break
        out = lm.model(
            torch.tensor([[tok]]),
            past_key_values=cache,
            position_ids=torch.tensor([[n + i]]),
            use_cache=True,
        )
        tok = int(out.logits[0, -1].argmax())
    return lm.tokenizer.decode(new, skip_special_tokens=True), cache.get_seq_length()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budgets", default="256,1024")
    p.add_argument("--lengths", default=None)
    p.add_argument("--depths", default="0.1,0.5,0.9")
    p.add_argument("--needles", type=int, default=3)
    p.add_argument("--needle-from", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="niah-kvpress.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import kvpress

    lm = load_model("smollm2")
    ctx = lm.model.config.max_position_embeddings
    lengths = (
        [int(x) for x in args.lengths.split(",")] if args.lengths else [1024, 2048, 4096, ctx - 192]
    )
    depths = [float(x) for x in args.depths.split(",")]
    needles = NEEDLES[args.needle_from : args.needle_from + args.needles]
    budgets = [int(b) for b in args.budgets.split(",")]
    press_cls = compatible(kvpress.SnapKVPress)
    rows = []
    for i, case in enumerate(make_grid(lm.tokenizer, lengths, depths, needles)):
        cfg = QAConfig(method="full", max_new_tokens=args.max_new_tokens)
        prompt = prepare(lm.model, lm.tokenizer, case.document, case.question, cfg)
        window = prompt.window(None)  # the tokens after the document, as GemFilter's default
        row = {"length": case.length_tokens, "depth": case.depth, "needle": case.needle.answer}
        row["prompt_tokens"] = prompt.n
        for b in budgets:
            t0 = time.perf_counter()
            ans, kept = snapkv_answer(
                lm, press_cls, prompt.ids, b, window, args.max_new_tokens, case
            )
            row[f"snapkv{b}"] = {
                "correct": case.is_correct(ans),
                "answer": ans,
                "cache_after": kept,
                "seconds": time.perf_counter() - t0,
            }
        rows.append(row)
        print(f"[{i + 1}] {json.dumps(row)}", file=sys.stderr, flush=True)
        _write(
            args.out,
            {
                "command": "python bench/niah_kvpress.py " + " ".join(sys.argv[1:]),
                "env": {**_env(lm), "kvpress": getattr(kvpress, "__version__", "0.5.2")},
                "budgets": budgets,
                "lengths": lengths,
                "depths": depths,
                "needles": [n.answer for n in needles],
                "max_new_tokens": args.max_new_tokens,
                "rows": rows,
            },
        )


if __name__ == "__main__":
    main()
