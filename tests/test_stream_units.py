"""`sepcli stream --per line|paragraph`: a record per unit, in the stream's context, and live on
a pipe (each line's record arrives before the next line is written)."""

from __future__ import annotations

import json
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.reader import line_cut, newline_cut_is_safe
from sepcli.texts import essays_text
from tests.helpers import tiny_model_folder

SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]
ROOT = Path(__file__).resolve().parent.parent
TEXT = (
    "Logs are written one line at a time.\n"
    "This one is ordinary.\n"
    "\n"
    "  An indented line after a blank one, with commas, colons: and more.\n"
    "Short.\n"
    "The last line has no line break"
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, tokenizer, "tiny-units-model", seed=5)


def opts(tiny_dir, *extra):
    return ["--model", tiny_dir, "--dtype", "fp32", *SMALL, *extra]


def test_cutting_before_line_breaks_keeps_the_tokens(tokenizer):
    assert newline_cut_is_safe(tokenizer)
    text = essays_text(max_chars=30000)
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces, rest = [], text
    while (cut := line_cut(rest[:-1])) > 0:  # cut at every line break, from the end
        pieces.insert(0, rest[cut:])
        rest = rest[:cut]
    pieces.insert(0, rest)
    assert len(pieces) > 100
    ids = [i for p in pieces for i in tokenizer(p, add_special_tokens=False)["input_ids"]]
    assert ids == whole


def test_per_line_records_match_an_independent_split(tiny_dir, tokenizer):
    result = CliRunner().invoke(
        app, ["stream", "-", "--per", "line", "--text", *opts(tiny_dir)], input=TEXT
    )
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in result.stdout.splitlines()]
    lines, summary = out[:-1], out[-1]
    assert [r["line"] for r in lines] == list(range(1, 7))
    assert [r["text"] for r in lines] == TEXT.split("\n")
    # reference: the engine over the whole text at once; each token goes to the line its last
    # character is in (a line break starts the next line), counted from the offsets.
    from sepcli.models import load_model

    lm = load_model(tiny_dir, dtype="fp32")
    enc = tokenizer(TEXT, add_special_tokens=False, return_offsets_mapping=True)
    ids = [tokenizer.bos_token_id] + enc["input_ids"]
    cfg = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)
    nll = torch.cat(
        [c.nll for c in StreamEngine(lm.model, cfg, separator_mask(tokenizer)).run([ids])]
    )
    owner = [TEXT[:end].count("\n") + 1 for _, end in enc["offset_mapping"]]
    for record in lines:
        mine = [float(x) for x, o in zip(nll, owner, strict=True) if o == record["line"]]
        assert record["tokens"] == len(mine)
        if not mine:  # a blank line whose break merged into the next line's token
            assert record["ppl"] is None and record["max_nll"] is None
            continue
        assert math.isclose(record["ppl"], math.exp(sum(mine) / len(mine)), rel_tol=1e-4)
        assert math.isclose(record["max_nll"], max(mine), abs_tol=1e-3)
    assert summary["event"] == "summary" and summary["tokens"] == len(nll)


def test_per_paragraph(tiny_dir):
    result = CliRunner().invoke(
        app, ["stream", "-", "--per", "paragraph", "--text", *opts(tiny_dir)], input=TEXT
    )
    assert result.exit_code == 0, result.output
    out = [json.loads(x) for x in result.stdout.splitlines()][:-1]
    assert [r["paragraph"] for r in out] == [1, 2]
    assert out[0]["text"] == "Logs are written one line at a time.\nThis one is ordinary."
    assert out[1]["text"].startswith("An indented line")


def test_per_refuses_what_it_cannot_do(tiny_dir):
    for extra in (["--per", "word"], ["--text"], ["--per", "line", "--max-tokens", "5"]):
        result = CliRunner().invoke(app, ["stream", "-", *opts(tiny_dir), *extra], input=TEXT)
        assert result.exit_code == 2, extra


def test_live_pipe_each_record_before_the_next_line(tiny_dir):
    """Lines are written into the pipe one by one; each line's record must come out before the
    next line is written (the wait allows for a loaded CI machine; on an idle one it takes
    well under a second)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sepcli", "stream", "-", "--per", "line", *opts(tiny_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )
    lines = [f"event {i}: the service answered request number {i} in {i * 7} ms" for i in range(5)]
    waits = []
    try:
        for i, line in enumerate(lines):
            proc.stdin.write((line + "\n").encode())
            proc.stdin.flush()
            start = time.perf_counter()
            ready, _, _ = select.select([proc.stdout], [], [], 60)
            assert ready, f"no record for line {i + 1} while the pipe stays open"
            record = json.loads(proc.stdout.readline())
            waits.append(time.perf_counter() - start)
            assert record["line"] == i + 1 and record["tokens"] > 5
        proc.stdin.close()
        rest = proc.stdout.read().decode().splitlines()
        assert json.loads(rest[-1])["event"] == "summary"
    finally:
        proc.kill()
        proc.wait()
    print("seconds from line written to record:", [round(w, 2) for w in waits])
