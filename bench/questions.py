"""Many questions about one document: separate `sepcli ask` runs vs one `--questions` run vs a
shell loop with `--doc-cache`, side by side in one run, through the CLI (each a fresh process).

    python bench/questions.py 8k       # ten questions, one ~8K-token document with six needles
    python bench/questions.py essays   # all the essays (~154K tokens), --segment-tokens 2048

Prints per-question TTFT for each way and the median ratio over the second and later questions,
checks that every way gives the same answers, and writes bench/results/questions-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, ROOT

# Held needles of the NIAH grid (3-5) plus the calibration ones, asked directly, and four
# paraphrases of the held ones: ten questions.
PARAPHRASES = [
    "Which harbour town is the capital of Zorbia?",
    "Which fruit does Professor Okafor like best?",
    "When is the kite festival in Brenmoor held?",
    "What number did Rebecca write on the blackboard?",
]


def plant(text: str, sentences: list[str], depths: list[float]) -> str:
    """``text`` with each sentence inserted at a sentence boundary near its depth (0..1)."""
    cuts = []
    for depth in depths:
        at = text.rfind(". ", 0, int(len(text) * depth))
        cuts.append(at + 2 if at >= 0 else 0)
    out, last = [], 0
    for at, sentence in sorted(zip(cuts, sentences, strict=True)):
        out += [text[last:at], sentence + " "]
        last = at
    return "".join(out) + text[last:]


def make_document(kind: str, tokens: int) -> tuple[str, list[str], list[str]]:
    """(document, questions, expected answers or '' when there is no single right one)."""
    from sepcli.gemfilter.needles import NEEDLES
    from sepcli.models import load_tokenizer
    from sepcli.texts import essays_text

    if kind == "essays":
        needles = list(NEEDLES[3:])
        text = essays_text()
        depths = [0.2, 0.6, 0.85]
    else:
        needles = list(NEEDLES)
        tok = load_tokenizer("smollm2")
        raw = essays_text(max_chars=tokens * 6)
        enc = tok(raw, add_special_tokens=False, return_offsets_mapping=True)
        budget = tokens - sum(len(tok(n.sentence)["input_ids"]) + 1 for n in needles)
        text = raw[: enc["offset_mapping"][min(budget, len(enc["input_ids"])) - 1][1]]
        depths = [0.08, 0.25, 0.4, 0.55, 0.7, 0.9]
    document = plant(text, [n.sentence for n in needles], depths)
    questions = [n.question for n in needles]
    answers = [n.answer for n in needles]
    if kind != "essays":
        questions += PARAPHRASES
        answers += ["Lunaville", "mango", "October", "7342"]
    return document, questions, answers


def sepcli(*args: str) -> tuple[list[dict], float]:
    """Run `python -m sepcli ...` in a fresh process: (its JSON lines, wall seconds)."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sepcli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"sepcli {' '.join(args[:3])} ... failed: {done.stderr.strip()[-800:]}")
    return [json.loads(x) for x in done.stdout.splitlines() if x.strip()], wall


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["8k", "essays"])
    p.add_argument("--tokens", type=int, default=7800, help="8k: document tokens")
    p.add_argument("--questions", type=int, default=None, help="ask only the first N")
    p.add_argument("--separate", type=int, default=None, help="separate runs for the first N")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--threads", type=int, default=None, help="default: sepcli's (the cores)")
    p.add_argument("--topk", type=int, default=None, help="default: 1024 (8k), 256 (essays)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    document, questions, expected = make_document(args.what, args.tokens)
    questions = questions[: args.questions]
    opts = ["--max-new-tokens", str(args.max_new_tokens), "--dtype", args.dtype, "-m", args.model]
    if args.threads is not None:
        opts += ["--threads", str(args.threads)]
    if args.what == "essays":
        opts += ["--segment-tokens", "2048"]
    opts += ["--topk", str(args.topk or (256 if args.what == "essays" else 1024))]
    n_separate = len(questions) if args.separate is None else args.separate
    with tempfile.TemporaryDirectory() as tmp:
        doc = Path(tmp) / "doc.txt"
        doc.write_text(document)
        qfile = Path(tmp) / "questions.txt"
        qfile.write_text("\n".join(questions) + "\n")
        cache = Path(tmp) / "doc.cache"

        def log(msg: str) -> None:
            print(msg, file=sys.stderr, flush=True)

        # (b) one run with --questions
        batch, batch_wall = sepcli("ask", str(doc), "--questions", str(qfile), *opts)
        log(f"--questions: {batch_wall:.1f} s wall, reading {batch[0]['reading_s']:.1f} s")
        # (c) a shell loop with --doc-cache
        loop, loop_walls = [], []
        for q in questions:
            (out,), wall = sepcli("ask", str(doc), q, "--doc-cache", str(cache), "--json", *opts)
            loop.append(out)
            loop_walls.append(wall)
            log(f"--doc-cache: {wall:.1f} s wall, ttft {out['ttft_s']:.2f} s")
        cache_bytes = cache.stat().st_size
        # (a) separate runs
        separate, separate_walls = [], []
        for q in questions[:n_separate]:
            (out,), wall = sepcli("ask", str(doc), q, "--json", *opts)
            separate.append(out)
            separate_walls.append(wall)
            log(f"separate: {wall:.1f} s wall, ttft {out['ttft_s']:.2f} s")

    rows = []
    for i, q in enumerate(questions):
        alone = separate[i] if i < n_separate else None
        row = {
            "question": q,
            "expected": expected[i],
            "answer": batch[i]["answer"],
            "correct": expected[i].lower() in batch[i]["answer"].lower(),
            "ttft_separate_s": alone["ttft_s"] if alone else None,
            "ttft_questions_s": batch[i]["ttft_s"],
            "ttft_doc_cache_s": loop[i]["ttft_s"],
            "same_answer_doc_cache": loop[i]["answer"] == batch[i]["answer"],
            "same_answer_separate": alone["answer"] == batch[i]["answer"] if alone else None,
            "same_kept_separate": (
                alone["selected_tokens"] == batch[i]["selected_tokens"] if alone else None
            ),
            "reading_reused": batch[i]["reading_reused"],
        }
        rows.append(row)
    later = [r for r in rows[1:] if r["ttft_separate_s"] is not None]
    if not later:  # one separate run: compare it with the later questions of the others
        base = [rows[0]["ttft_separate_s"]]
    else:
        base = [r["ttft_separate_s"] for r in later]
    med_sep = statistics.median(base)
    med_q = statistics.median(r["ttft_questions_s"] for r in rows[1:])
    med_c = statistics.median(r["ttft_doc_cache_s"] for r in rows[1:])
    summary = {
        "questions": len(questions),
        "prompt_tokens_first": batch[0]["prompt_tokens"],
        "segments": batch[0]["segments"],
        "reading_s": batch[0]["reading_s"],
        "first_ttft_questions_with_reading_s": batch[0]["reading_s"] + batch[0]["ttft_s"],
        "total_wall_separate_s": sum(separate_walls),
        "separate_runs": n_separate,
        "total_wall_questions_s": batch_wall,
        "total_wall_doc_cache_s": sum(loop_walls),
        "median_ttft_separate_s": med_sep,
        "median_ttft_questions_later_s": med_q,
        "median_ttft_doc_cache_later_s": med_c,
        "speedup_questions": med_sep / med_q,
        "speedup_doc_cache": med_sep / med_c,
        "doc_cache_bytes": cache_bytes,
        "same_answers": all(r["same_answer_doc_cache"] for r in rows)
        and all(r["same_answer_separate"] in (True, None) for r in rows),
        "correct": sum(r["correct"] for r in rows),
    }
    print("| # | question | TTFT separate (s) | --questions (s) | --doc-cache loop (s) | same |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        sep = "-" if r["ttft_separate_s"] is None else f"{r['ttft_separate_s']:.2f}"
        same = r["same_answer_doc_cache"] and r["same_answer_separate"] in (True, None)
        print(
            f"| {i} | {r['question']} | {sep} | {r['ttft_questions_s']:.2f} | "
            f"{r['ttft_doc_cache_s']:.2f} | {'yes' if same else 'NO'} |"
        )
    print(json.dumps(summary, indent=1))
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / (args.out or f"questions-{args.what}.json")
    env = {
        "platform": platform.platform(),
        "cpu_threads": os.cpu_count(),
        "threads": args.threads,
        "dtype": args.dtype,
        "model": args.model,
        "command": "python bench/questions.py " + " ".join(sys.argv[1:]),
    }
    path.write_text(json.dumps({"env": env, "summary": summary, "rows": rows}, indent=1))
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
