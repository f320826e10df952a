"""kvpress's SnapKV on the same needle-in-a-haystack cases as ``bench/niah_grid.py``.

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
import time

import torch

from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.pipeline import prepare
from sepcli.generate.detok import stream_text
from sepcli.generate.sampling import stop_ids
from sepcli.models import load_model

from common import (
    add_case_options,
    case_done,
    int_list,
    model_env,
    needle_grid,
    until_correct,
)


def compatible(press_cls):
    """kvpress 0.5.2's hook reads ``past_key_values`` and ``cache_position`` from the attention
    kwargs; transformers 5.x no longer passes the positions, and from 5.24 names the cache
    ``cache``. We only ever prefill once, from an empty cache, under the press, so the positions
    are 0..q_len-1; everything else is kvpress's own code."""

    class Press(press_cls):
        def forward_hook(self, module, input, kwargs, output):
            if "past_key_values" not in kwargs and "cache" in kwargs:
                kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
            if "cache_position" not in kwargs:
                q_len = kwargs["hidden_states"].shape[1]
                kwargs = {**kwargs, "cache_position": torch.arange(q_len)}
            return super().forward_hook(module, input, kwargs, output)

    return Press


@torch.inference_mode()
def snapkv_ids(lm, press_cls, ids: torch.Tensor, budget: int, window: int, max_new: int, cache):
    """Prefill ``ids`` [n] into ``cache`` under SnapKV keeping ``budget`` entries, then yield
    greedy answer tokens decoded from that cache at the original positions n, n+1, ... (so not
    ``generate_ids``, which starts a fresh cache at position 0)."""
    n = ids.numel()
    ratio = max(0.0, 1.0 - budget / n)
    press = press_cls(compression_ratio=ratio, window_size=min(window, n - 1))
    with press(lm.model):
        out = lm.model(ids[None], past_key_values=cache, use_cache=True)
    stop = stop_ids(lm.model, lm.tokenizer)
    for i in range(max_new):
        tok = int(out.logits[0, -1].argmax())
        if tok in stop:
            return
        yield tok
        out = lm.model(
            torch.tensor([[tok]]),
            past_key_values=cache,
            position_ids=torch.tensor([[n + i]]),
            use_cache=True,
        )


def snapkv_answer(lm, press_cls, ids, budget: int, window: int, max_new: int, case):
    """-> (answer read until correct, cache entries at the end)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    tokens = snapkv_ids(lm, press_cls, ids, budget, window, max_new, cache)
    text = until_correct(stream_text(lm.tokenizer, tokens), case)
    return text, cache.get_seq_length()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budgets", type=int_list, default="256,1024")
    add_case_options(p, max_new_tokens=12)
    p.add_argument("--out", default="niah-kvpress.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import kvpress

    lm = load_model("smollm2")
    lengths, needles, cases = needle_grid(lm, args)
    budgets = args.budgets
    press_cls = compatible(kvpress.SnapKVPress)
    rows = []
    for case in cases:
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
        case_done(
            args.out,
            rows,
            row,
            {
                "env": {**model_env(lm), "kvpress": getattr(kvpress, "__version__", "0.5.2")},
                "budgets": budgets,
                "lengths": lengths,
                "depths": args.depths,
                "needles": [n.answer for n in needles],
                "max_new_tokens": args.max_new_tokens,
            },
        )


if __name__ == "__main__":
    main()
