"""`sepcli stream` through Typer's CliRunner with a tiny local model: stdin, JSON lines,
checkpoint/resume, and one-line errors for bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essays_text

from helpers import build_tiny_llama

SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=7
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def text():
    return essays_text(max_chars=2500)


def run(args, input=None):
    return CliRunner().invoke(app, ["stream", *args], input=input)


def lines(result):
    return [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]


def base(tiny_dir, *extra):
    return ["--model", tiny_dir, "--dtype", "fp32", "--json", *SMALL, *extra]


def test_stdin_json_lines_match_the_engine(tiny_dir, text, tokenizer):
    result = run(["-", *base(tiny_dir, "--max-tokens", "200", "--interval", "0")], input=text)
    assert result.exit_code == 0, result.output
    out = lines(result)
    summary = out[-1]
    assert summary["event"] == "summary" and len(out) > 2
    for key in ("tokens", "ppl", "recent_ppl", "tok_per_s", "cache_used", "cache_capacity"):
        assert key in summary and all(key in line for line in out)
    assert summary["tokens"] == 200 and summary["cache_capacity"] == 40
    assert summary["config"]["capacity"] == 40 and summary["interrupted"] is False

    from sepcli.models import load_model

    lm = load_model(tiny_dir, dtype="fp32")
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"][:200]
    cfg = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)
    stats = list(StreamEngine(lm.model, cfg, separator_mask(tokenizer)).run([ids]))
    nll = torch.cat([s.nll for s in stats])
    assert math.isclose(summary["ppl"], math.exp(nll.mean()), rel_tol=1e-4)


def test_file_and_stdin_agree(tiny_dir, text, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text(text)
    a = lines(run([str(path), *base(tiny_dir, "--max-tokens", "120")]))[-1]
    b = lines(run(["-", *base(tiny_dir, "--max-tokens", "120")], input=text))[-1]
    assert a["tokens"] == b["tokens"] == 120 and a["ppl"] == b["ppl"]


def test_resume_gives_the_same_perplexity(tiny_dir, text, tmp_path):
    ck = tmp_path / "run.ckpt"
    whole = lines(run(["-", *base(tiny_dir, "--max-tokens", "300")], input=text))[-1]
    first = run(
        ["-", *base(tiny_dir, "--max-tokens", "130", "--checkpoint", str(ck), "--every", "50")],
        input=text,
    )
    assert first.exit_code == 0, first.output and ck.is_file()
    second = run(["-", *base(tiny_dir, "--max-tokens", "300", "--resume", str(ck))], input=text)
    assert second.exit_code == 0, second.output
    resumed = lines(second)[-1]
    # resumed_at counts tokens of input, like --max-tokens (the BOS the stream starts with is not)
    assert resumed["resumed_at"] == 130 and resumed["tokens"] == whole["tokens"] == 300
    assert math.isclose(resumed["ppl"], whole["ppl"], rel_tol=1e-5)


def test_mismatched_or_corrupt_checkpoint_is_refused(tiny_dir, text, tmp_path):
    ck = tmp_path / "run.ckpt"
    assert (
        run(
            ["-", *base(tiny_dir, "--max-tokens", "40", "--checkpoint", str(ck))], input=text
        ).exit_code
        == 0
    )
    other = run(
        [
            "-",
            "--model",
            tiny_dir,
            "--dtype",
            "fp32",
            "--json",
            "--capacity",
            "400",
            "--resume",
            str(ck),
        ],
        input=text,
    )
    assert other.exit_code == 2 and "another run" in other.output and "capacity" in other.output
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    corrupt = run(["-", *base(tiny_dir, "--resume", str(bad))], input=text)
    assert corrupt.exit_code == 2 and "not a readable sepcli checkpoint" in corrupt.output


def test_checkpoint_never_overwrites_a_file_that_is_not_a_checkpoint(tiny_dir, text, tmp_path):
    doc = tmp_path / "book.txt"
    doc.write_text(text)
    result = run([str(doc), *base(tiny_dir, "--max-tokens", "40", "--checkpoint", str(doc))])
    assert result.exit_code == 2 and "not a sepcli checkpoint" in result.output
    assert doc.read_text() == text  # the input is intact
    ck = tmp_path / "run.ckpt"  # an existing checkpoint, on the other hand, is updated
    for n in ("40", "60"):
        args = [str(doc), *base(tiny_dir, "--max-tokens", n, "--checkpoint", str(ck))]
        assert run(args).exit_code == 0
    resumed = run([str(doc), *base(tiny_dir, "--max-tokens", "80", "--resume", str(ck))])
    assert resumed.exit_code == 0 and lines(resumed)[-1]["resumed_at"] == 60


def test_resume_refuses_another_input_or_nothing_left(tiny_dir, text, tmp_path):
    ck = tmp_path / "run.ckpt"
    made = run(["-", *base(tiny_dir, "--max-tokens", "100", "--checkpoint", str(ck))], input=text)
    assert made.exit_code == 0, made.output
    saved = ck.read_bytes()
    cases = [
        (text.replace("the", "a"), [], "not the ones the checkpoint was made from"),
        (text[:200], [], "before the checkpoint's 100:"),  # counts are tokens of input
        (text, ["--max-tokens", "100"], "nothing is left to stream"),
    ]
    for stdin, extra, match in cases:
        result = run(
            ["-", *base(tiny_dir, "--resume", str(ck), "--checkpoint", str(ck), *extra)],
            input=stdin,
        )
        assert result.exit_code == 2 and match in result.output, result.output
        assert not lines(result)  # refused before streaming: no progress, no summary
        assert ck.read_bytes() == saved  # and the checkpoint is not overwritten


def test_unwritable_checkpoint_is_refused_before_streaming(tiny_dir, text, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ck = blocker / "run.ckpt"  # its folder cannot be created
    result = run(["-", *base(tiny_dir, "--checkpoint", str(ck), "--interval", "0")], input=text)
    assert result.exit_code == 2 and "cannot write checkpoint" in result.output
    assert not lines(result) and blocker.read_text() == "not a folder"


def test_options_the_method_ignores_are_warned_about(tiny_dir, text):
    result = run(
        ["-", "--model", tiny_dir, "--json", "--method", "window", "--window", "100"], input=text
    )
    assert result.exit_code == 0, result.output
    assert "--window has no effect with --method window" in result.stderr
    assert lines(result)[-1]["cache_capacity"] == 324  # the window method keeps --capacity
    quiet = run(["-", *base(tiny_dir, "--max-tokens", "50")], input=text)
    assert quiet.exit_code == 0 and "warning" not in quiet.stderr


def test_no_ppl_fills_the_cache_and_counts_the_input(tiny_dir, text):
    out = lines(run(["-", *base(tiny_dir, "--max-tokens", "90", "--no-ppl")], input=text))[-1]
    assert out["tokens"] == 0 and out["input_tokens"] == 90 and out["ppl"] is None
    assert 2 + 16 <= out["cache_used"] <= 40  # the cache was filled: sinks + window at least


def test_progress_lines_are_marked(tiny_dir, text):
    out = lines(run(["-", *base(tiny_dir, "--max-tokens", "100", "--interval", "0")], input=text))
    assert {x["event"] for x in out[:-1]} == {"progress"} and out[-1]["event"] == "summary"


@pytest.mark.parametrize(
    "args, stdin, match",
    [
        (["/no/such/file.txt"], None, "no such file"),
        (["{tmp}"], None, "is a directory"),
        (["{empty}"], None, "empty"),
        (["{binary}"], None, "binary"),
        (["-"], "", "empty"),
        (["-", "--capacity", "292"], "x y", "must be larger than"),
        (["-", "--init", "-3"], "x y", "--init must be >= 0"),
        (["-", "--chunk", "300"], "x y", "larger than --window"),
        (["-", "--method", "magic"], "x y", "unknown method"),
        (["-", "--max-tokens", "0"], "x y", "--max-tokens"),
        (["-", "--every", "0"], "x y", "--every"),
        (["-", "--interval", "nan"], "x y", "--interval"),
        (["-", "--capacity", "600"], "x y", "larger than the model's context of 512"),
    ],
)
def test_bad_input_is_one_line_error(tiny_dir, tmp_path, args, stdin, match):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x00\x01" * 100)
    args = [
        a.format(tmp=tmp_path, empty=tmp_path / "empty.txt", binary=tmp_path / "bin.dat")
        for a in args
    ]
    ck = tmp_path / "never.ckpt"
    result = run([*args, "--model", tiny_dir, "--checkpoint", str(ck)], input=stdin)
    assert result.exit_code == 2, result.output
    errors = [x for x in result.output.splitlines() if x.strip()]
    assert len(errors) >= 1 and errors[-1].startswith("error:") and match in errors[-1]
    assert "Traceback" not in result.output
    assert not ck.exists()  # nothing written on bad input


def test_undecodable_bytes_are_replaced_with_a_warning(tiny_dir):
    data = (b"caf\xe9 and more \xff text. " * 20).decode("latin-1")
    result = CliRunner().invoke(app, ["stream", "-", *base(tiny_dir)], input=data.encode("latin-1"))
    assert result.exit_code == 0, result.output
    assert lines(result)[-1]["replaced_chars"] == 40
    assert "replaced with U+FFFD" in result.stderr


def test_full_method_past_the_context_is_refused(tiny_dir, text):
    result = run(
        ["-", "--model", tiny_dir, "--dtype", "fp32", "--json", "--method", "full"], input=text * 2
    )
    assert result.exit_code == 2 and "context of 512" in result.output


def test_sigterm_stops_cleanly_with_summary_and_checkpoint(tiny_dir, text, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "long.txt"
    path.write_text(text * 200)  # far more than the test lets it read
    ck = tmp_path / "stop.ckpt"
    cmd = [sys.executable, "-m", "sepcli", "stream", str(path), *base(tiny_dir), "--interval", "0"]
    cmd += ["--checkpoint", str(ck)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    first = proc.stdout.readline()  # the first progress line: the loop is running
    assert first.startswith("{"), proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["event"] == "summary" and summary["interrupted"] is True
    assert 0 < summary["tokens"] < 40000 and ck.is_file() and "Traceback" not in err


def test_a_file_of_known_size_reports_how_much_is_done(tiny_dir, text, tmp_path):
    """Progress of a file (or of --max-tokens) carries done_pct and an ETA; stdin has neither."""
    path = tmp_path / "t.txt"
    path.write_text(text * 4)
    out = lines(run([str(path), *base(tiny_dir, "--interval", "0", "--chunk", "8")]))
    done = [x["done_pct"] for x in out[:-1]]
    assert len(done) > 5 and done == sorted(done) and 0 < done[0] < 50 and done[-1] > 90
    assert all(x["eta_s"] >= 0 for x in out[:-1])
    capped = lines(run([str(path), *base(tiny_dir, "--interval", "0", "--max-tokens", "160")]))
    assert capped[-2]["done_pct"] == 100.0 and capped[-2]["tokens"] == 160
    piped = lines(run(["-", *base(tiny_dir, "--interval", "0")], input=text))
    assert all("done_pct" not in x for x in piped)
