"""The StreamingLLM experiment as a long chat: recall, repetition and reply perplexity per
cache method, turn after turn far past the context (numbers and plot in docs/generate.md).

    python bench/generate_chat.py [--turns 30] [--methods sepllm,streamingllm,window,full]
    python bench/generate_chat.py --report [--out a.json,b.json]   # table + PNG of runs, merged

Set OMP_NUM_THREADS to pin the thread count (we used 1 on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sepcli.generate.decode import GenerateConfig
from sepcli.models import load_model
from sepcli.stream.config import StreamConfig
from sepcli.texts import essays_text

from common import DOCS, RESULTS, machine, pin_threads

pin_threads()


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
    chat_report(args.out, args.plot)


def chat_report(results: str, plot: str | None) -> None:
    """Table (markdown, stdout) and plot of chat runs (``results``: comma-separated files)."""
    res = None
    for path in results.split(","):  # runs of some methods each, merged
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
    if plot:
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
        fig.savefig(plot, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--report",
        action="store_true",
        help="only the table and the PNG of --out (comma-separated)",
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--reply-tokens", type=int, default=24)
    parser.add_argument("--methods", default="sepllm,streamingllm,window,full")
    parser.add_argument("--out", default=str(RESULTS / "generate-chat.json"))
    parser.add_argument("--plot", default=str(DOCS / "generate_chat.png"))
    args = parser.parse_args()
    if args.report:
        chat_report(args.out, args.plot)
    else:
        chat_run(args)


if __name__ == "__main__":
    main()
