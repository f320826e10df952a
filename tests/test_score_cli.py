"""`sepcli score` end to end with a tiny local model: one output record per input record, in
order; bad input; shards and --skip; Ctrl-C/SIGTERM; `| head`; agreement with `sepcli stream`."""

from __future__ import annotations

import gzip
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.texts import essays_text
from tests.helpers import tiny_model_folder

SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, tokenizer, "tiny-score-model", seed=7)


@pytest.fixture(scope="module")
def texts():
    """Real text of mixed length: 1 to 60 words (the cache holds 40 tokens)."""
    words = essays_text(max_chars=20000).split(" ")
    out, i = [], 0
    for k in range(30):
        n = 1 + (k * 37) % 60
        out.append(" ".join(words[i : i + n]))
        i += n
    return out


def run(args, input=None):
    return CliRunner().invoke(app, ["score", *args], input=input)


def opts(tiny_dir, *extra):
    return ["--model", tiny_dir, "--dtype", "fp32", *SMALL, *extra]


def records(result):
    return [json.loads(x) for x in result.stdout.splitlines()]


def jsonl(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_every_record_comes_back_in_order_with_its_score(tiny_dir, texts, tmp_path):
    rows = [{"id": i, "text": t, "meta": {"k": [1, 2]}} for i, t in enumerate(texts)]
    path = tmp_path / "in.jsonl"
    path.write_text(jsonl(rows[:10]) + "\n  \n" + jsonl(rows[10:]))  # blank lines are not records
    result = run([str(path), *opts(tiny_dir)])
    assert result.exit_code == 0, result.output
    out = records(result)
    assert [r["id"] for r in out] == list(range(len(texts)))
    for row, got in zip(rows, out, strict=True):
        assert {k: got[k] for k in row} == row
        # ppl to 4 decimals, as `stream` reports it; nll in full
        assert got["tokens"] > 0 and got["ppl"] == round(math.exp(got["nll"]), 4)
    # one at a time (a batch of one record each) gives the same scores
    alone = [records(run(["-", *opts(tiny_dir)], input=jsonl([row])))[0]["nll"] for row in rows[:4]]
    for a, got in zip(alone, out, strict=False):
        assert math.isclose(a, got["nll"], rel_tol=1e-6)


def test_a_document_scores_as_stream_scores_it(tiny_dir, texts, tmp_path):
    text = " ".join(texts[5:7])  # longer than the cache
    (tmp_path / "doc.txt").write_text(text)
    streamed = CliRunner().invoke(
        app, ["stream", str(tmp_path / "doc.txt"), "--json", *opts(tiny_dir)]
    )
    summary = json.loads(streamed.stdout.splitlines()[-1])
    one = run(["-", *opts(tiny_dir)], input=jsonl([{"text": text}]))
    assert "score: 1 record," in one.stderr
    got = records(one)[0]
    assert got["tokens"] == summary["tokens"] > 40
    assert math.isclose(got["ppl"], summary["ppl"], rel_tol=1e-5)  # stream rounds to 4 places
    # a text file given as an argument is one document: the same score
    as_file = records(run([str(tmp_path / "doc.txt"), *opts(tiny_dir)]))[0]
    assert as_file["file"] == str(tmp_path / "doc.txt") and as_file["nll"] == got["nll"]


def test_bad_records_stop_the_run_after_what_came_before(tiny_dir, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine one"}\n{"text": "fine two"}\n{"text": oops}\n{"text": "x"}\n')
    result = run([str(path), *opts(tiny_dir)])
    assert result.exit_code == 2
    assert [r["text"] for r in records(result)] == ["fine one", "fine two"]
    assert f"{path}:3: malformed JSON" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ('{"body": "no text field"}', "no field 'text'"),
        ('{"text": 42}', "field 'text' is int, not a string"),
        ('{"text": null}', "field 'text' is null"),
        ("[1, 2]", "the line is a JSON list, not an object"),
    ],
)
def test_each_kind_of_bad_record_names_file_and_line(tiny_dir, line, why):
    result = run(["-", *opts(tiny_dir)], input='{"text": "ok"}\n' + line + "\n")
    assert result.exit_code == 2 and len(records(result)) == 1
    assert f"-:2: {why}" in result.stderr


def test_skip_bad_passes_every_record_through(tiny_dir):
    lines = [
        '{"text": "good", "id": 1}',
        '{"text": "broken',
        '{"body": "no field", "id": 3}',
        '{"text": 7, "id": 4}',
        '{"text": "", "id": 5}',
        '{"text": "Hi", "id": 6}',
    ]
    result = run(["-", *opts(tiny_dir, "--skip-bad", "--prefix", "lm_")], input="\n".join(lines))
    assert result.exit_code == 0, result.output
    out = records(result)
    assert len(out) == 6
    assert out[0]["lm_tokens"] > 0 and "lm_error" not in out[0]
    assert out[1]["lm_input"] == lines[1] and "malformed JSON" in out[1]["lm_error"]
    assert out[2]["body"] == "no field" and "no field 'text'" in out[2]["lm_error"]
    assert out[3]["text"] == 7 and "not a string" in out[3]["lm_error"]
    assert (out[4]["lm_tokens"], out[4]["lm_ppl"], out[4]["lm_nll"]) == (0, None, None)
    assert out[5]["lm_tokens"] == 1 and out[5]["lm_ppl"] > 0
    assert "3 record(s) could not be scored" in result.stderr


def test_non_utf8_bytes_are_replaced_counted_and_warned(tiny_dir, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 cr\xe8me"}\n{"text": "fine \xef\xbf\xbd"}\n')
    result = run([str(path), *opts(tiny_dir)])
    assert result.exit_code == 0, result.output
    out = records(result)
    assert out[0]["text"] == "caf\ufffd cr\ufffdme" and out[0]["tokens"] > 0
    assert "2 undecodable byte sequence(s) replaced" in result.stderr


def test_gzip_dotted_field_and_several_files(tiny_dir, texts, tmp_path):
    gz = tmp_path / "a.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(jsonl([{"doc": {"body": t}} for t in texts[:3]]))
    plain = tmp_path / "b.jsonl"
    plain.write_text(jsonl([{"doc": {"body": t}} for t in texts[3:5]]))
    result = run([str(gz), str(plain), *opts(tiny_dir, "--field", "doc.body")])
    assert result.exit_code == 0, result.output
    assert [r["doc"]["body"] for r in records(result)] == texts[:5]
    bad = tmp_path / "c.jsonl.gz"
    bad.write_bytes(b"not gzip at all\n")
    broken = run([str(bad), *opts(tiny_dir)])
    assert broken.exit_code == 2 and "not a valid gzip file" in broken.stderr


def test_lines_mode_keeps_every_line(tiny_dir):
    result = run(["-", "--lines", *opts(tiny_dir)], input="first line\n\nthird line\r\nlast")
    assert result.exit_code == 0, result.output
    out = records(result)
    assert [(r["line"], r["text"]) for r in out] == [
        (1, "first line"),
        (2, ""),
        (3, "third line"),
        (4, "last"),
    ]
    assert out[1]["ppl"] is None and all(r["ppl"] for r in out if r["text"])


def test_shards_cover_the_corpus_once_and_skip_resumes(tiny_dir, texts, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(jsonl([{"id": i, "text": t} for i, t in enumerate(texts)]))
    whole = {r["id"]: r for r in records(run([str(path), *opts(tiny_dir)]))}
    parts = [records(run([str(path), "--shard", f"{i}/3", *opts(tiny_dir)])) for i in range(3)]
    assert [r["id"] for r in parts[1]] == list(range(1, len(texts), 3))
    ids = sorted(r["id"] for part in parts for r in part)
    assert ids == list(range(len(texts)))
    for part in parts:
        for r in part:
            assert math.isclose(r["nll"], whole[r["id"]]["nll"], rel_tol=1e-6)
    rest = records(run([str(path), "--shard", "1/3", "--skip", "4", *opts(tiny_dir)]))
    assert [r["id"] for r in rest] == [r["id"] for r in parts[1][4:]]


@pytest.mark.parametrize("value", ["3/3", "1", "a/b", "-1/2"])
def test_bad_shard_is_refused(tiny_dir, value):
    result = run(["-", "--shard", value, *opts(tiny_dir)], input='{"text": "a"}\n')
    assert result.exit_code == 2 and "--shard must be I/N" in result.stderr


def test_missing_input_is_a_one_line_error(tiny_dir, tmp_path):
    result = run([str(tmp_path / "nope.jsonl"), *opts(tiny_dir)])
    assert result.exit_code == 2 and "no such file" in result.stderr


def test_a_100_mb_line_passes_through(tiny_dir, tmp_path):
    """A record with a 100 MB field beside a short document: read, scored and written back
    byte for byte (the document scored is short, so the test stays fast)."""
    blob = "x" * (100 * 2**20)
    path = tmp_path / "huge.jsonl"
    with open(path, "w") as f:
        f.write('{"text": "short one"}\n')
        f.write('{"blob": "' + blob + '", "text": "Hello there"}\n')
    out = tmp_path / "out.jsonl"
    with open(out, "w") as f:
        proc = _cli([str(path), *opts(tiny_dir)], stdout=f)
    assert proc.returncode == 0, proc.stderr
    with open(out) as f:
        first, second = f.readline(), f.readline()
    assert json.loads(first)["tokens"] > 0
    got = json.loads(second)
    assert got["blob"] == blob and got["tokens"] == 2
    del blob, got, second


def _cli(args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [sys.executable, "-m", "sepcli", "score", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
        **kw,
    )


def test_sigterm_stops_after_the_batch_and_says_how_to_continue(tiny_dir, tmp_path):
    path = tmp_path / "many.jsonl"
    rows = [{"id": i, "text": f"Record number {i} says hello."} for i in range(3000)]
    path.write_text(jsonl(rows))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Unbuffered bytes: readline() then takes exactly one line. (A buffered reader reads ahead,
    # and communicate() reads the pipe itself, so what the buffer held would be lost.)
    proc = subprocess.Popen(
        [sys.executable, "-m", "sepcli", "score", str(path), *opts(tiny_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,
        env=env,
        cwd=ROOT,
    )
    first = proc.stdout.readline()  # the first batch is written
    proc.send_signal(signal.SIGTERM)
    rest, err = proc.communicate(timeout=300)
    err = err.decode()
    out = [json.loads(x) for x in (first + rest).decode().splitlines()]
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert 0 < len(out) < len(rows)
    assert [r["id"] for r in out] == list(range(len(out)))
    assert f"{len(out)} records written; continue with --skip {len(out)}" in err
    more = _cli([str(path), "--skip", str(len(out)), *opts(tiny_dir)])
    assert more.returncode == 0
    assert [json.loads(x)["id"] for x in more.stdout.splitlines()] == list(
        range(len(out), len(rows))
    )


def test_head_closing_the_pipe_exits_quietly(tiny_dir, tmp_path):
    path = tmp_path / "many.jsonl"
    path.write_text(jsonl([{"text": f"Line {i} of many."} for i in range(3000)]))
    cmd = (
        f"{sys.executable} -m sepcli score {path} {' '.join(opts(tiny_dir))} | head -n 2; "
        "echo status=${PIPESTATUS[0]}"
    )
    started = time.perf_counter()
    proc = subprocess.run(
        ["bash", "-c", cmd],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=300,
    )
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and lines[-1] == "status=0", (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr
    assert time.perf_counter() - started < 300
