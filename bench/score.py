"""Benchmarks of `sepcli score` (numbers in docs/score.md come from here).

    python bench/score.py throughput [--lines 1400] [--paragraphs 600] [--essays 8]
                                     [--batch-tokens N] [--one-every 1] [--dtype fp32]
    python bench/score.py batch-sizes [--dtype int8] [--sizes 128,256,512,1024,4096] [--rounds 2]
    python bench/score.py memory     [--big-mb 20] [--total-mb 50] [--threads 1]

throughput: one corpus of real documents of mixed length (the bundled essays cut into lines and
paragraphs, and whole essays longer than the cache), scored side by side in one process by three
contenders:

- ``sepcli score``: the command's own path (records read from a JSONL file, the same batches,
  :class:`~sepcli.score.job.ScoreRecords`); long documents scored whole through the ring;
- one document at a time through the same engine (a fresh StreamEngine per document);
- what a user would write with transformers: length-sorted padded batches through
  ``model(input_ids, attention_mask=...)``, each document truncated to the model's context.

memory: peak RSS of `sepcli score` (a subprocess, tiny random model) on a JSONL of
``--total-mb`` holding one ``--big-mb`` document, against the same file without that document.

Set OMP_NUM_THREADS to pin the thread count. Results JSON go to bench/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sepcli.models import load_model
from sepcli.score.job import ScoreRecords, batches
from sepcli.score.records import ReadCounts, read_records
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essay_paths

from common import RESULTS, ROOT, pin_threads

pin_threads()

# The essays run paragraphs together ("...end.Next paragraph"): a paragraph ends where a
# sentence end is followed directly by a capital letter, or at a blank line.
PARAGRAPH_END = re.compile(r"(?<=[.?!\"\)\]])(?=[A-Z\[])|\n\s*\n")


def corpus(tok, lines: int, paragraphs: int, essays: int, capacity: int) -> list[str]:
    """Real documents of mixed length, in a fixed shuffled order: lines of the essays (as they
    are wrapped, ~15 tokens), paragraphs (~90 tokens) and whole essays longer than the cache."""
    texts = [p.read_text(encoding="utf-8", errors="replace").strip() for p in essay_paths()]
    paras = [q.strip() for t in texts for q in PARAGRAPH_END.split(t) if q and q.strip()]
    wrapped = [x.strip() for t in reversed(texts) for x in t.splitlines() if x.strip()]
    docs = wrapped[:lines] + paras[:paragraphs]
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    long = [t for t, n in zip(texts, lengths, strict=True) if capacity < n < 8000]
    docs += long[:essays]
    g = torch.Generator().manual_seed(0)
    return [docs[i] for i in torch.randperm(len(docs), generator=g).tolist()]


def run_score(job: ScoreRecords, path: Path) -> list[float]:
    """`sepcli score`'s path, I/O included (JSONL in, output lines parsed back). The job is
    built outside the timing, as the others' separator table is."""
    out = []
    for batch in batches(read_records([str(path)], "text", False, ReadCounts()), True):
        out += [json.loads(o.line)["nll"] for o in job.score_records(batch)]
    return out


def run_one_at_a_time(lm, docs, config, seps) -> list[float]:
    """Each document alone through a fresh StreamEngine (BOS + its tokens, as `stream`)."""
    out = []
    for text in docs:
        ids = [lm.tokenizer.bos_token_id] + lm.tokenizer(text, add_special_tokens=False)[
            "input_ids"
        ]
        stats = list(StreamEngine(lm.model, config, seps).run([ids]))
        out.append(sum(s.nll_sum for s in stats) / sum(s.scored for s in stats))
    return out


@torch.inference_mode()
def run_padded(lm, docs, batch_tokens, context) -> tuple[list[float], int]:
    """The transformers baseline: truncate to the context, sort by length, pad, forward.
    -> (mean NLL per document, tokens scored)."""
    tok = lm.tokenizer
    ids = [
        ([tok.bos_token_id] + x)[:context] for x in tok(docs, add_special_tokens=False)["input_ids"]
    ]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    out, scored, start = [0.0] * len(ids), 0, 0
    while start < len(order):
        size = max(1, batch_tokens // len(ids[order[start]]))
        group = order[start : start + size]
        start += size
        t = len(ids[group[0]])
        batch = torch.zeros(len(group), t, dtype=torch.long)
        mask = torch.zeros(len(group), t, dtype=torch.long)
        for row, i in enumerate(group):
            batch[row, : len(ids[i])] = torch.tensor(ids[i])
            mask[row, : len(ids[i])] = 1
        logits = lm.model(input_ids=batch, attention_mask=mask).logits.float()
        nll = F.cross_entropy(
            logits[:, :-1].transpose(1, 2), batch[:, 1:], reduction="none"
        )  # (B, T-1)
        keep = mask[:, 1:].bool()
        for row, i in enumerate(group):
            n = int(keep[row].sum())
            out[i] = float(nll[row][keep[row]].sum()) / n
            scored += n
    return out, scored


def throughput(args) -> dict:
    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    config = StreamConfig()
    seps = separator_mask(lm.tokenizer)
    capacity = config.capacity
    context = lm.model.config.max_position_embeddings
    docs = corpus(lm.tokenizer, args.lines, args.paragraphs, args.essays, capacity)
    lengths = [len(x) for x in lm.tokenizer(docs, add_special_tokens=False)["input_ids"]]
    tokens = sum(lengths)
    print(
        f"corpus: {len(docs)} documents, {tokens} tokens; "
        f"{sum(n + 1 > capacity for n in lengths)} longer than the cache ({capacity}), "
        f"{sum(n + 1 > context for n in lengths)} longer than the context ({context})",
        file=sys.stderr,
    )
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        job = ScoreRecords(loaded=lm, config=config, batch_tokens=args.batch_tokens)
        batch_tokens = job.scorer.batch_tokens  # the baseline batches as sepcli score does
        contenders = {
            "sepcli_score": lambda: (run_score(job, path), tokens),
            "padded_truncated": lambda: run_padded(lm, docs, batch_tokens, context),
            "one_at_a_time": lambda: (
                run_one_at_a_time(lm, docs[:: args.one_every], config, seps),
                sum(lengths[:: args.one_every]),
            ),
        }
        scores = {}
        for name, fn in contenders.items():
            start = time.perf_counter()
            scores[name], scored = fn()
            seconds = time.perf_counter() - start
            n_docs = len(scores[name])
            results[name] = {
                "documents": n_docs,
                "seconds": round(seconds, 1),
                "docs_per_s": round(n_docs / seconds, 2),
                "tokens_per_s": round(scored / seconds, 1),
                "tokens_scored": scored,
            }
            print(name, results[name], file=sys.stderr)
    base = results["padded_truncated"]
    ours = results["sepcli_score"]
    ratios = {
        "score_vs_padded_docs_per_s": round(ours["docs_per_s"] / base["docs_per_s"], 2),
        "score_vs_one_at_a_time_docs_per_s": round(
            ours["docs_per_s"] / results["one_at_a_time"]["docs_per_s"], 2
        ),
    }
    pairs = list(
        zip(scores["sepcli_score"][:: args.one_every], scores["one_at_a_time"], strict=True)
    )
    rel = [abs(a - b) / abs(b) for a, b in pairs]
    return {
        "bench": "score-throughput",
        "model": lm.name,
        "dtype": lm.dtype_name,
        "threads": torch.get_num_threads(),
        "machine": f"{os.cpu_count()} CPU cores",
        "documents": len(docs),
        "tokens": tokens,
        "longer_than_cache": sum(n + 1 > capacity for n in lengths),
        "config": config.to_dict(),
        "batch_tokens": batch_tokens,
        "results": results,
        "ratios": ratios,
        "max_rel_diff_score_vs_one_at_a_time": max(rel),
        "max_abs_diff_nll_score_vs_one_at_a_time": max(abs(a - b) for a, b in pairs),
    }


# ---------------------------------------------------------------------------- batch sizes


def batch_sizes(args) -> dict:
    """tokens/s of the short-document path (DocScorer) for each --batch-tokens, in rounds."""
    from sepcli.score.scorer import DocScorer

    lm = load_model(args.model, device="cpu", dtype=args.dtype)
    config = StreamConfig()
    seps = separator_mask(lm.tokenizer)
    docs = corpus(lm.tokenizer, args.lines, args.paragraphs, 0, config.capacity)
    sizes = [int(x) for x in args.sizes.split(",")]
    rates: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(args.rounds):
        for n in sizes:
            scorer = DocScorer(lm.model, lm.tokenizer, config, seps, batch_tokens=n)
            start = time.perf_counter()
            scored = sum(s.tokens for s in scorer.score(docs))
            rates[n].append(round(scored / (time.perf_counter() - start), 1))
            print(n, rates[n][-1], file=sys.stderr)
    return {
        "bench": "score-batch-sizes",
        "model": lm.name,
        "dtype": lm.dtype_name,
        "threads": torch.get_num_threads(),
        "documents": len(docs),
        "tokens_per_s_by_batch_tokens": {str(n): r for n, r in rates.items()},
    }


# ---------------------------------------------------------------------------- memory


def peak_rss_of(cmd: list[str], stdout) -> tuple[float, float]:
    """Run ``cmd``; -> (peak RSS MiB of the child, seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.DEVNULL, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed with {status}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def load_test_helper(name: str):
    """A function of the test suite's tests/helpers.py, loaded by its path (the tests folder is
    not an installed package)."""
    spec = importlib.util.spec_from_file_location(
        "sepcli_test_helpers", ROOT / "tests" / "helpers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def memory(args) -> dict:
    from sepcli.models import load_tokenizer

    build_tiny_llama = load_test_helper("build_tiny_llama")

    tok = load_tokenizer("smollm2")
    essays = [p.read_text(encoding="utf-8", errors="replace") for p in essay_paths()]
    prose = " ".join(" ".join(e.split()) for e in essays)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_dir = tmp / "tiny"
        build_tiny_llama(
            len(tok), layers=1, hidden=16, heads=2, kv_heads=1, max_positions=4096, seed=0
        ).save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        big = (prose * (args.big_mb * 2**20 // len(prose) + 1))[: args.big_mb * 2**20]
        # The rest of the file: records with a paragraph to score and a payload beside it, so
        # the file has its size without hours of scoring on a CPU (see docs/score.md).
        paras = [q.strip() for e in essays for q in PARAGRAPH_END.split(e) if q and q.strip()]
        filler, size, i = [], 0, 0
        rest_bytes = (args.total_mb - args.big_mb) * 2**20
        while size < rest_bytes:
            line = json.dumps({"id": i, "text": paras[i % len(paras)], "payload": "p" * 10_000})
            filler.append(line + "\n")
            size += len(line) + 1
            i += 1
        half = len(filler) // 2
        with_big, without = tmp / "with.jsonl", tmp / "without.jsonl"
        without.write_text("".join(filler))
        with open(with_big, "w") as f:
            f.write("".join(filler[:half]))
            f.write(json.dumps({"id": "big", "text": big}) + "\n")
            f.write("".join(filler[half:]))
        del big, filler
        cache = ["--window", "1024", "--chunk", "1024", "--capacity", "1200", "--sep", "64"]
        base = [sys.executable, "-m", "sepcli", "score", "--model", str(model_dir)]
        base += ["--dtype", "fp32", "--threads", str(args.threads), *cache]
        runs = {}
        for name, path in (("without", without), ("with", with_big)):
            with open(tmp / f"{name}.out", "w") as out:
                rss, seconds = peak_rss_of([*base, str(path)], out)
            lines = sum(1 for _ in open(tmp / f"{name}.out"))
            runs[name] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "records": lines,
                "peak_rss_mb": round(rss, 1),
                "seconds": round(seconds, 1),
            }
            print(name, runs[name], file=sys.stderr)
    return {
        "bench": "score-memory",
        "model": "tiny random Llama (1 layer, hidden 16, SmolLM2 tokenizer), fp32",
        "big_document_mb": args.big_mb,
        "cache": cache,
        "threads": args.threads,
        "runs": runs,
        "rss_ratio_with_vs_without": round(
            runs["with"]["peak_rss_mb"] / runs["without"]["peak_rss_mb"], 3
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--model", default="smollm2")
    t.add_argument("--dtype", default="fp32")
    t.add_argument("--lines", type=int, default=1400)
    t.add_argument("--paragraphs", type=int, default=600)
    t.add_argument("--essays", type=int, default=8)
    t.add_argument("--batch-tokens", type=int, default=None, help="default: sepcli score's")
    t.add_argument(
        "--one-every",
        type=int,
        default=1,
        help="one-at-a-time scores every k-th document only (same mix; rates compared)",
    )
    t.add_argument("--out", default=str(RESULTS / "score-throughput.json"))
    m = sub.add_parser("memory")
    m.add_argument("--big-mb", type=int, default=20)
    m.add_argument("--total-mb", type=int, default=50)
    m.add_argument("--threads", type=int, default=1, help="sepcli score's --threads")
    m.add_argument("--out", default=str(RESULTS / "score-memory.json"))
    b = sub.add_parser("batch-sizes")
    b.add_argument("--model", default="smollm2")
    b.add_argument("--dtype", default="int8")
    b.add_argument("--lines", type=int, default=350)
    b.add_argument("--paragraphs", type=int, default=150)
    b.add_argument("--sizes", default="128,256,512,1024,4096")
    b.add_argument("--rounds", type=int, default=2)
    b.add_argument("--out", default=str(RESULTS / "score-batch-sizes.json"))
    args = ap.parse_args()
    modes = {"throughput": throughput, "batch-sizes": batch_sizes, "memory": memory}
    result = modes[args.what](args)
    result["command"] = "python bench/score.py " + " ".join(sys.argv[1:])
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
