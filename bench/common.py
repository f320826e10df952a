"""What several benchmark scripts share: where results go and how a run records its machine and
command line; the essays as stream tokens and the timing of a stream (stream*.py); the needle
cases, the per-case record and reading an answer until it is correct (niah*.py).

The scripts are run as ``python bench/<script>.py`` from the repository root. Python puts the
script's folder first on ``sys.path``, so ``from common import ...`` finds this module with no
path edits, while ``sepcli`` and ``kernels`` come from the installed package (``make install``
installs this checkout in editable mode; another checkout sharing that venv adds
``PYTHONPATH=.``). For the same reason no script in this folder may be named like a package it
imports.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch

from sepcli.gemfilter.generate import answer_pieces
from sepcli.gemfilter.needles import NEEDLES, make_grid
from sepcli.stream.reader import start_token
from sepcli.texts import essays_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"


def machine() -> dict:
    """Where a figure was measured: CPU, torch threads, GPU (when there is one), torch, date."""
    info = {
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def model_env(lm) -> dict:
    """:func:`machine` plus the model a run used (a ``sepcli.models.LoadedModel``)."""
    return {"model": lm.name, "device": str(lm.device), "dtype": lm.dtype_name, **machine()}


def command() -> str:
    """The command line that produced a result, as the docs write it."""
    return " ".join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])


def write_result(name: str, payload: dict) -> Path:
    """Write ``payload`` as bench/results/<name> (rewritten after every case, so an interrupted
    run keeps what it measured)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return path


def case_done(name: str, rows: list[dict], row: dict, fields: dict) -> None:
    """Record one finished case: append ``row``, print one stderr line (each method reduced to
    correct or not), and rewrite bench/results/<name> with the command, ``fields`` and rows."""
    rows.append(row)
    brief = {k: (v["correct"] if isinstance(v, dict) else v) for k, v in row.items()}
    print(f"[{len(rows)}] {json.dumps(brief)}", file=sys.stderr, flush=True)
    write_result(name, {"command": command(), **fields, "rows": rows})


def int_list(text: str) -> list[int]:
    """'256,1024' -> [256, 1024] (an argparse ``type``)."""
    return [int(x) for x in text.split(",") if x.strip()]


def float_list(text: str) -> list[float]:
    """'0.1,0.5' -> [0.1, 0.5] (an argparse ``type``)."""
    return [float(x) for x in text.split(",") if x.strip()]


def essay_ids(tok, n: int, source: str = "essays", bos_per_line: bool = False) -> list[int]:
    """The stream's start token (BOS, as `sepcli stream`) + the first n tokens of the bundled
    essays, or of the UTF-8 text file ``source`` (repeated if it is shorter).

    bos_per_line: the protocol of the official SepLLM code's perplexity evaluation: every
    non-empty line tokenized on its own with a BOS in front, newlines dropped."""
    text = essays_text() if source == "essays" else Path(source).read_text(encoding="utf-8")
    if bos_per_line:
        if tok.bos_token_id is None:
            raise SystemExit("--bos-per-line needs a tokenizer with a BOS token")
        lines = [line for line in text.splitlines() if line.strip()]
        ids = []
        for part in tok(lines, add_special_tokens=False)["input_ids"]:
            ids += [tok.bos_token_id] + part
            if len(ids) > n:
                break
        ids = ids[1:]
    else:
        ids = tok(text, add_special_tokens=False)["input_ids"]
    while len(ids) < n:
        ids = ids + ids
    return start_token(tok) + ids[:n]


def add_case_options(parser, max_new_tokens: int) -> None:
    """The needle-case options that the niah_*.py benches share, so all run the same
    cases (needles 3-5 by default: the calibration uses 0-2)."""
    parser.add_argument("--lengths", type=int_list, default=None, help="document tokens")
    parser.add_argument("--depths", type=float_list, default="0.1,0.5,0.9")
    parser.add_argument("--needles", type=int, default=3)
    parser.add_argument("--needle-from", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--threads", type=int, default=2)


def needle_grid(lm, args, lengths: list[int] | None = None):
    """(lengths, needles, cases) that the :func:`add_case_options` ask for. Lengths default to
    ``lengths``, else 1K, 2K, 4K and the context less 192 tokens of room for the answer."""
    ctx = lm.model.config.max_position_embeddings
    lengths = args.lengths or lengths or [1024, 2048, 4096, ctx - 192]
    needles = NEEDLES[args.needle_from : args.needle_from + args.needles]
    return lengths, needles, make_grid(lm.tokenizer, lengths, args.depths, needles)


def until_correct(pieces: Iterable[tuple[str, int]], case) -> str:
    """Join ``(text piece, id)`` pairs (``sepcli.generate.detok.stream_text``) into an
    answer, stopping as soon as ``case`` (a NeedleCase) judges it correct. Greedy decoding is
    deterministic, so the verdict equals that of decoding every token; only the stored text is
    shorter, and the shared CPU cores are spared the rest."""
    text = ""
    for piece, _ in pieces:
        text += piece
        if case.is_correct(text):
            break
    return text


def timed_feed(engine, ids: list[int]) -> float:
    """Seconds for a StreamEngine to take ``ids`` (waiting for the GPU when it runs on one)."""
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(engine.device)
    t0 = time.perf_counter()
    for _ in engine.run([ids]):
        pass
    if cuda:
        torch.cuda.synchronize(engine.device)
    return time.perf_counter() - t0


def pin_threads() -> None:
    """torch's CPU threads from OMP_NUM_THREADS when it is set (the benches' one knob)."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


# ---------------------------------------------------------------------- the NIAH benches


def niah_parser(doc: str, max_new_tokens: int = 16):
    """The options every bench/niah_*.py takes: the model, its dtype, the needle cases and the
    filter layer."""
    import argparse

    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2")
    parser.add_argument(
        "--dtype", default="auto", help="as `sepcli --dtype` (auto, fp32, int8, ...)"
    )
    add_case_options(parser, max_new_tokens=max_new_tokens)
    parser.add_argument(
        "--layer", type=int, default=None, help="0-based filter layer (default: calibrated)"
    )
    return parser


def add_one_case_options(parser) -> None:
    """One question at one length (niah_speed.py, and niah_ttft.py, which hands them on)."""
    from sepcli.gemfilter.calibrate import DEFAULT_CALIBRATION_TOPK

    parser.add_argument("--topk", type=int, default=DEFAULT_CALIBRATION_TOPK)
    parser.add_argument(
        "--length", type=int, default=None, help="document tokens (default: context - 192)"
    )


def niah_start(args, load: bool = True):
    """Threads as asked, quiet tokenizers, and (``load``) the model."""
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if load:
        from sepcli.models import load_model

        return load_model(args.model, dtype=args.dtype)
    return None


def answer(lm, ids: torch.Tensor, max_new: int, case) -> str:
    """Greedy answer to prompt ``ids`` [n], as ``sepcli ask`` decodes it, read until correct."""
    return until_correct(answer_pieces(lm.model, lm.tokenizer, ids, max_new), case)


def judge(lm, case, prompt, idx: torch.Tensor, max_new: int) -> dict:
    """Answer from the kept positions ``idx``; correct, answer, needle recall, tokens kept."""
    ans = answer(lm, prompt.ids[idx], max_new, case)
    return {
        "correct": case.is_correct(ans),
        "answer": ans,
        "recall": case.recall(prompt, idx.tolist()),
        "kept": idx.numel(),
    }


def plot_calibration_curves() -> None:
    """Hit rate per layer for each stored calibration run (query window 'question' vs 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for path in sorted(RESULTS.glob("niah-calibration*.json")):
        d = json.loads(path.read_text())
        xs = list(range(len(d["accuracy"])))
        label = f"window={d.get('window', 1)}: hit rate (best layer {d['chosen_layer']})"
        ax.plot(xs, d["accuracy"], marker="o", label=label)
    ax.set_xlabel("filter layer (0-based)")
    ax.set_ylabel(">= 50% of needle in top-k")
    ax.set_ylim(0, 1.05)
    ax.set_title(
        f"SmolLM2-135M-Instruct calibration (top-{d['topk']}, {d['cases']} cases)", fontsize=9
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(DOCS / "gemfilter-calibration.png", dpi=110)
