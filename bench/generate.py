"""Benchmarks of generation on the ring (numbers in docs/generate.md come from here).

    python bench/generate.py speed [--prompt-tokens 128] [--new-tokens 128] [--repeats 3]
    python bench/generate.py long  [--new-tokens 50000] [--dtype fp32] [--every 1000]
    python bench/generate.py long-plot [--plot docs/generate_long.png]
    python bench/generate.py chat  [--turns 60] [--methods sepllm,streamingllm,window,full]

All runs use the embedded SmolLM2-135M-Instruct (`--model` takes anything `sepcli --model`
does) and the bundled essays. Ratios are measured side by side in one process.
Set OMP_NUM_THREADS to pin the thread count (we used 1 on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sepcli.generate.decode import Decoder, GenerateConfig
from sepcli.generate.sampling import SamplingConfig, stop_ids
from sepcli.memory import peak_rss_mb, rss_mb
from sepcli.models import load_model
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essays_text

from common import DOCS, RESULTS, essay_ids, machine

if "OMP_NUM_THREADS" in os.environ:
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# ---------------------------------------------------------------------- decode speed vs transformers


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


# ---------------------------------------------------------------------- 50K tokens past the context


def long_run(args) -> None:
    """Generate ``--new-tokens`` tokens with sepllm, one JSON line per ``--every`` tokens."""
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    cfg = StreamConfig(method=args.method)
    engine = StreamEngine(lm.model, cfg, separator_mask(lm.tokenizer), score=False)
    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    decoder = Decoder(engine, lm.tokenizer, sampling, stop_ids(lm.model, lm.tokenizer))
    prompt = essay_ids(lm.tokenizer, args.prompt_tokens)
    for _ in decoder.prefill([prompt]):
        pass
    # The control: a second decoder on its own ring, same prompt and config, that stays near
    # the start of its text. In the last --paired tokens of every block the two step in turn,
    # one token each, so the ratio of their rates is what the long one's position costs,
    # whatever else the machine runs.
    ref_engine = StreamEngine(lm.model, cfg, separator_mask(lm.tokenizer), score=False)
    ref = Decoder(ref_engine, lm.tokenizer, sampling, stop_ids(lm.model, lm.tokenizer))
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
    long_plot(argparse.Namespace(results=args.out, plot=args.plot))


def long_plot(args) -> None:
    """Summary numbers and the PNG from the JSON lines of a ``long`` run (also a partial one)."""
    rows = [json.loads(x) for x in Path(args.results).read_text().splitlines()]
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
    if args.plot:
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
        fig.savefig(args.plot, dpi=110)


# ---------------------------------------------------------------------- the StreamingLLM chat

NAMES = [
    "the red door",
    "the north gate",
    "the old library",
    "the boat house",
    "the tower",
    "the garden shed",
    "the wine cellar",
    "the east wing",
    "the clock room",
    "the attic",
    "the blue van",
    "the west bridge",
    "the music hall",
    "the boiler room",
    "the archive",
    "the chapel",
    "the green tent",
    "the far barn",
    "the glass lab",
    "the map room",
]
WORDS = [
    "harbor",
    "violet",
    "pepper",
    "saturn",
    "marble",
    "falcon",
    "copper",
    "walnut",
    "lantern",
    "orchid",
    "glacier",
    "cobalt",
    "meadow",
    "thunder",
    "saffron",
    "quartz",
    "willow",
    "canyon",
    "ember",
    "tulip",
]


def chat_turns(n_turns: int) -> list[dict]:
    """Cycles of six turns: a fact, its recall one turn later, another fact, two questions on
    essay passages, that fact's recall three turns later. Real text, deterministic."""
    paras = [p.strip() for p in essays_text().split("\n\n") if p.strip()]
    # passages of consecutive paragraphs, 3,000-5,000 characters (about 750-1,250 tokens)
    passages, cur = [], ""
    for para in paras:
        cur = f"{cur}\n\n{para}" if cur else para
        if len(cur) >= 3000:
            if len(cur) <= 5000:
                passages.append(cur)
            cur = ""
    turns, k, pi = [], 0, 0
    while len(turns) < n_turns:
        f1, f2 = (NAMES[k % 20], WORDS[k % 20]), (NAMES[(k + 7) % 20], WORDS[(k + 11) % 20])
        k += 1

        def fact(f):
            return {
                "kind": "fact",
                "user": f"Remember this for later: the password for {f[0]} is {f[1]}.",
            }

        def recall(f, gap):
            return {
                "kind": "recall",
                "answer": f[1],
                "gap": gap,
                "user": f"What is the password for {f[0]}? Answer with the password only.",
            }

        def passage():
            nonlocal pi
            pi += 1
            return {
                "kind": "passage",
                "user": passages[pi * 7 % len(passages)]
                + "\n\nIn one sentence, what is the main point of this passage?",
            }

        turns += [fact(f1), recall(f1, 1), fact(f2), passage(), passage(), recall(f2, 3)]
    return turns[:n_turns]


def repetition(ids: list[int], n: int = 4) -> float:
    """Share of the reply's n-grams that already occurred in it (0: none repeated)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return 0.0 if not grams else 1 - len(set(grams)) / len(grams)


@torch.inference_mode()
def turn_ppl(model, tok, fmt, user: str, reply_ids: list[int]) -> float | None:
    """Perplexity of the reply under full attention over this turn alone (a fresh conversation
    of one turn: the template's opening for the message, then the reply)."""
    if not reply_ids:
        return None
    head = tok(fmt.opening(user), add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + reply_ids])
    logits = model(ids).logits[0, len(head) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(reply_ids))
    return round(float(nll.exp()), 3)


def chat_run(args) -> None:
    from sepcli.errors import ContextLimitError
    from sepcli.generate.chat import ChatSession

    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    turns = chat_turns(args.turns)
    results = {"turns": turns, "dtype": args.dtype, "model": lm.name, "runs": {}, **machine()}
    for method in args.methods.split(","):
        cfg = StreamConfig(method=method)
        session = ChatSession(lm.model, lm.tokenizer, cfg, GenerateConfig(args.reply_tokens))
        rows, refused = [], None
        t0 = time.perf_counter()
        for i, turn in enumerate(turns, start=1):
            try:
                ids = [t.id for t in session.send(turn["user"])]
            except ContextLimitError as exc:
                refused = {"turn": i, "error": str(exc)}
                break
            done = session.turns[-1]
            row = {
                "turn": i,
                "kind": turn["kind"],
                "total_tokens": session.stats()["total_tokens"],
                "new_tokens": done.new_tokens,
                "repetition": round(repetition(ids), 4),
                "ppl": turn_ppl(lm.model, lm.tokenizer, session.format, turn["user"], ids),
                "reply": done.reply,
            }
            if turn["kind"] == "recall":
                row["recalled"] = turn["answer"] in done.reply.lower()
                row["gap"] = turn["gap"]
            rows.append(row)
            results["runs"][method] = {"config": cfg.to_dict(), "rows": rows, "refused": None}
            Path(args.out).write_text(json.dumps(results, indent=1))  # partial runs count too
            print(
                json.dumps({"method": method, **{k: v for k, v in row.items() if k != "reply"}}),
                flush=True,
            )
        results["runs"][method] = {
            "config": cfg.to_dict(),
            "rows": rows,
            "refused": refused,
            "elapsed_s": round(time.perf_counter() - t0, 1),
        }
        Path(args.out).write_text(json.dumps(results, indent=1))
    chat_report(argparse.Namespace(results=args.out, plot=args.plot))


def chat_report(args) -> None:
    """Table (markdown, stdout) and plot of a chat run."""
    res = None
    for path in args.results.split(","):  # runs of some methods each, merged
        part = json.loads(Path(path).read_text())
        if res is None:
            res = part
        else:
            res["runs"].update(part["runs"])
    limit = 8192
    print(
        "| method | turns | tokens | recall gap 1 | recall gap 3 | repetition | median reply ppl"
        " (< 8K / > 8K tokens) |"
    )
    print("|---|---|---|---|---|---|---|")
    for method, run in res["runs"].items():
        rows = run["rows"]

        def rate(gap, rows=rows):
            hits = [r["recalled"] for r in rows if r["kind"] == "recall" and r["gap"] == gap]
            return f"{sum(hits)}/{len(hits)}" if hits else "-"

        def med(xs):
            xs = sorted(x for x in xs if x is not None)
            return f"{xs[len(xs) // 2]:.1f}" if xs else "-"

        early = med(r["ppl"] for r in rows if r["total_tokens"] <= limit)
        late = med(r["ppl"] for r in rows if r["total_tokens"] > limit)
        rep = sum(r["repetition"] for r in rows) / max(1, len(rows))
        end = f"refused at turn {run['refused']['turn']}" if run["refused"] else len(rows)
        tokens = rows[-1]["total_tokens"] if rows else 0
        print(
            f"| {method} | {end} | {tokens:,} | {rate(1)} | {rate(3)} | {rep:.3f} | "
            f"{early} / {late} |"
        )
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for method, run in res["runs"].items():
            rows = [r for r in run["rows"] if r["ppl"] is not None]
            a1.plot(
                [r["total_tokens"] for r in rows],
                [r["ppl"] for r in rows],
                ".-",
                label=method,
                alpha=0.8,
            )
            a2.plot(
                [r["total_tokens"] for r in run["rows"]],
                [r["repetition"] for r in run["rows"]],
                ".-",
                label=method,
                alpha=0.8,
            )
        for ax, name in (
            (a1, "reply perplexity (full attention, turn alone)"),
            (a2, "reply 4-gram repetition"),
        ):
            ax.axvline(limit, color="gray", ls=":")
            ax.set_xlabel("tokens in the conversation")
            ax.set_title(name)
        a1.set_yscale("log")
        a1.legend()
        fig.suptitle(f"sepcli chat, {res['model']} {res['dtype']}, capacity 324 (full: 8192)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("speed", help="decode tok/s: sepcli vs model.generate (DynamicCache)")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--method", default="sepllm")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(RESULTS / "generate-speed-fp32.json"))
    p.set_defaults(fn=speed_run)

    p = sub.add_parser("long", help="tens of thousands of tokens far past the context")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--method", default="sepllm")
    p.add_argument("--new-tokens", type=int, default=50_000)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--every", type=int, default=1000)
    p.add_argument(
        "--paired", type=int, default=100, help="tokens per block timed against the control"
    )
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "generate-long.jsonl"))
    p.add_argument("--plot", default=str(DOCS / "generate_long.png"))
    p.set_defaults(fn=long_run)

    p = sub.add_parser("long-plot", help="summary + PNG of a long run's JSON lines")
    p.add_argument("--results", default=str(RESULTS / "generate-long.jsonl"))
    p.add_argument("--plot", default=str(DOCS / "generate_long.png"))
    p.set_defaults(fn=long_plot)

    p = sub.add_parser("chat", help="the StreamingLLM experiment as a long chat")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--dtype", default="fp32")
    p.add_argument("--turns", type=int, default=30)
    p.add_argument("--reply-tokens", type=int, default=24)
    p.add_argument("--methods", default="sepllm,streamingllm,window,full")
    p.add_argument("--out", default=str(RESULTS / "generate-chat.json"))
    p.add_argument("--plot", default=str(DOCS / "generate_chat.png"))
    p.set_defaults(fn=chat_run)

    p = sub.add_parser("chat-report", help="table + PNG of chat runs (comma-separated files)")
    p.add_argument("--results", default=str(RESULTS / "generate-chat.json"))
    p.add_argument("--plot", default=str(DOCS / "generate_chat.png"))
    p.set_defaults(fn=chat_report)

    args = parser.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
