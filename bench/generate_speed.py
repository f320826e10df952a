"""Decode speed: sepcli's ring against transformers' ``model.generate`` (DynamicCache), same
model, dtype, prompt and length, alternating runs (numbers in docs/generate.md).

    python bench/generate_speed.py [--dtype fp32] [--prompt-tokens 128] [--new-tokens 128] [--repeats 3]

The embedded SmolLM2-135M-Instruct (`--model` takes anything `sepcli --model` does) and the
bundled essays. Set OMP_NUM_THREADS to pin the thread count (we used 1 on a shared 2-core
machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sepcli.generate.decode import Decoder
from sepcli.generate.sampling import SamplingConfig
from sepcli.models import load_model
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine

from common import RESULTS, essay_ids, machine, pin_threads

pin_threads()


@torch.inference_mode()
def speed_run(args) -> None:
    """Greedy decode tok/s of sepcli's ring vs ``model.generate`` with a DynamicCache, same
    model, dtype, prompt and length, alternating runs. Decode rate = (n - 1) forwards over the
    time after the first token (prefill excluded): for transformers, t(n) - t(1)."""
    from transformers import DynamicCache

    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    model, tok = lm.model, lm.tokenizer
    prompt = essay_ids(tok, args.prompt_tokens)
    n = args.new_tokens
    cfg = StreamConfig(method=args.method)
    seps = separator_mask(tok)
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = None  # both run the full n tokens

    def ours() -> tuple[float, list[int]]:
        engine = StreamEngine(model, cfg, seps, score=False)
        decoder = Decoder(engine, tok, SamplingConfig(), eos=set())
        for _ in decoder.prefill([prompt]):
            pass
        ids = [t.id for t in decoder.decode(n)]
        return (n - 1) / decoder.decode_s, ids

    def hf(new: int) -> tuple[float, list[int]]:
        x = torch.tensor([prompt])
        t = time.perf_counter()
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=new,
            do_sample=False,
            cache=DynamicCache(config=model.config),
            pad_token_id=0,
        )
        return time.perf_counter() - t, out[0, len(prompt) :].tolist()

    def interleaved() -> dict:
        """Token by token, alternating: one sepcli step, one transformers step (its own loop
        on a DynamicCache, as generate runs it, without generate's bookkeeping), so both see
        the same load on a shared machine."""
        engine = StreamEngine(model, cfg, seps, score=False)
        decoder = Decoder(engine, tok, SamplingConfig(), eos=set())
        for _ in decoder.prefill([prompt]):
            pass
        steps = decoder.decode(n)
        cache = DynamicCache(config=model.config)
        logits = model(torch.tensor([prompt]), cache=cache, logits_to_keep=1).logits[0, -1]
        t_ours = t_hf = 0.0
        same = True
        for i in range(n):
            t = time.perf_counter()
            ours_tok = next(steps).id
            t1 = time.perf_counter()
            hf_tok = int(logits.argmax())
            if i < n - 1:
                logits = model(torch.tensor([[hf_tok]]), cache=cache, logits_to_keep=1).logits[
                    0, -1
                ]
            t2 = time.perf_counter()
            if i > 0:  # the first token comes from the prefill's logits on both sides
                t_ours, t_hf = t_ours + t1 - t, t_hf + t2 - t1
            same = same and ours_tok == hf_tok
        return {
            "sepcli_tok_per_s": round((n - 1) / t_ours, 2),
            "hf_loop_tok_per_s": round((n - 1) / t_hf, 2),
            "same_ids": same,
        }

    rows = []
    for r in range(args.repeats):
        t1, _ = hf(1)
        tn, hf_ids = hf(n)
        ours_rate, our_ids = ours()
        row = {
            "repeat": r,
            "sepcli_tok_per_s": round(ours_rate, 2),
            "hf_generate_tok_per_s": round((n - 1) / (tn - t1), 2),
            "same_ids": our_ids == hf_ids,
        }
        step = interleaved()
        row["interleaved"] = step
        row["interleaved_ratio"] = round(step["sepcli_tok_per_s"] / step["hf_loop_tok_per_s"], 3)
        rows.append(row)
        print(json.dumps(rows[-1]), flush=True)
    model.generation_config.eos_token_id = eos
    med = sorted(r["sepcli_tok_per_s"] / r["hf_generate_tok_per_s"] for r in rows)[len(rows) // 2]
    med_step = sorted(r["interleaved_ratio"] for r in rows)[len(rows) // 2]
    summary = {
        "model": lm.name,
        "dtype": args.dtype,
        "method": args.method,
        "config": cfg.to_dict(),
        "prompt_tokens": len(prompt),
        "new_tokens": n,
        "rows": rows,
        "median_ratio_sepcli_over_hf_generate": round(med, 3),
        "median_interleaved_ratio_sepcli_over_hf_loop": round(med_step, 3),
        **machine(),
    }
    keys = ("median_ratio_sepcli_over_hf_generate", "median_interleaved_ratio_sepcli_over_hf_loop")
    print(json.dumps({k: summary[k] for k in (*keys, "dtype", "threads")}))
    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--method", default="sepllm")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "generate-speed-fp32.json"))
    speed_run(parser.parse_args())


if __name__ == "__main__":
    main()
