"""`sepcli ask / gemfilter / calibrate` through Typer's runner, on a tiny model saved to disk."""

from __future__ import annotations

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.commands.qa_options import clean_question
from sepcli.commands.show import shown_ranges

from helpers import build_tiny_llama, fifo_with_writer

runner = CliRunner()
DOC = "The lighthouse keeper painted the door green. Boats came home at dusk. The bell rang twice."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """A 3-layer tiny Llama + the SmolLM2 tokenizer (chat template), saved as a HF folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    model = build_tiny_llama(
        len(tokenizer), layers=3, hidden=64, heads=4, kv_heads=2, max_positions=256, seed=7
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture
def doc_file(tmp_path):
    path = tmp_path / "doc.txt"
    path.write_text(DOC)
    return str(path)


@pytest.fixture(autouse=True)
def own_cache(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path / "cache"))


def invoke(*args, stdin=None):
    return runner.invoke(app, list(args), input=stdin)


def assert_one_line_error(result, needle):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    assert needle in err, err


def test_ask_json_has_the_fields_and_records_layer(tiny_dir, doc_file):
    r = invoke(
        "ask",
        doc_file,
        "What colour is the door?",
        "-m",
        tiny_dir,
        "--layer",
        "1",
        "--topk",
        "16",
        "--max-new-tokens",
        "5",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    for key in (
        "answer",
        "method",
        "layer",
        "topk",
        "prompt_tokens",
        "selected_tokens",
        "ttft_s",
        "total_s",
        "peak_mem_bytes",
    ):
        assert key in out
    assert out["method"] == "gemfilter" and out["layer"] == 1 and out["topk"] == 16
    assert out["selected_tokens"] < out["prompt_tokens"]


def test_ask_streams_answer_and_full_method_reads_all(tiny_dir, doc_file):
    r = invoke(
        "ask",
        doc_file,
        "What colour?",
        "-m",
        tiny_dir,
        "--method",
        "full",
        "--max-new-tokens",
        "4",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (
        out["method"] == "full"
        and out["selected_tokens"] == out["prompt_tokens"]
        and out["layer"] is None
    )
    assert "warning" not in r.stderr
    r = invoke(
        "ask", doc_file, "What colour?", "-m", tiny_dir, "--method", "full", "-k", "5",
        "--segment-tokens", "64", "--max-new-tokens", "2", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "--topk has no effect with --method full" in r.stderr
    assert "--segment-tokens has no effect" in r.stderr and "--layer" not in r.stderr
    r = invoke(
        "ask",
        doc_file,
        "What colour?",
        "-m",
        tiny_dir,
        "--layer",
        "0",
        "--max-new-tokens",
        "4",
        "--show",
    )
    assert r.exit_code == 0, r.output
    assert "selected" in r.stderr and "lighthouse" in r.stderr


def test_gemfilter_reads_stdin_and_prints_selected_text(tiny_dir):
    r = invoke(
        "gemfilter",
        "-",
        "Boats?",
        "-m",
        tiny_dir,
        "--layer",
        "2",
        "--topk",
        "8",
        "--unit",
        "token",
        "--json",
        stdin=DOC,
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert (
        out["indices"] == sorted(out["indices"]) and len(out["indices"]) == len(out["scores"]) > 0
    )
    assert out["document_tokens"] > len(out["indices"]) == 8
    r = invoke(
        "gemfilter", "-", "Boats?", "-m", tiny_dir, "--layer", "2", "--top-k", "1000", stdin=DOC
    )
    # everything kept = the document itself (--top-k is the spelling of --topk users also try)
    assert r.exit_code == 0 and r.stdout.strip() == DOC


@pytest.mark.parametrize("command", ["ask", "gemfilter", "calibrate"])
def test_help_lists_topk_but_not_the_sampling_spelling(command):
    """--top-k is sampling's option in generate/chat/serve: the GemFilter commands still take
    it for --topk (above) but list only --topk / -k."""
    r = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "--topk" in r.output and "--top-k" not in r.output


@pytest.mark.parametrize(
    "args,needle",
    [
        (["ask", "/nonexistent/doc.txt", "q"], "no such file"),
        (["ask", "{doc}", "   "], "question is empty"),
        (["ask", "{doc}", "q", "--topk", "0"], "--topk must be > 0"),
        (["ask", "{doc}", "q", "--layer", "3"], "numbered 0..2"),
        (["ask", "{doc}", "q", "--layer", "-1"], "--layer must be >= 0"),
        (["ask", "{doc}", "q", "--layer", "middle"], "'auto' or a 0-based"),
        (["ask", "{doc}", "q", "--method", "fast"], "--method must be one of"),
        (["ask", "{empty}", "q"], "is empty"),
        (["ask", "{long}", "q", "--no-split"], "context is 256"),
        (["ask", "{long}", "q", "--method", "full"], "context is 256"),
        (["ask", "{long}", "q"], "--topk 1024 is too large"),
        (["gemfilter", "{long}", "why " * 300, "-k", "8"], "ask a shorter question"),
        (["gemfilter", "{doc}", "q", "--topk", "-5"], "--topk must be > 0"),
        (["gemfilter", "{doc}", ""], "question is empty"),
        (["calibrate", "--topk", "0"], "--topk must be > 0"),
        (["ask", "{doc}", "q", "--window", "0"], "--window must be >= 1"),
        (["gemfilter", "{doc}", "q", "--window", "all"], "--window must be 'question'"),
        (["gemfilter", "{doc}", "q", "--segment-tokens", "-3"], "--segment-tokens must be >= 0"),
        (["ask", "{doc}", "q", "--unit", "word"], "--unit must be one of"),
        (["calibrate", "--judge", "word"], "--judge must be one of"),
        (["calibrate", "--unit", "word"], "--judge must be one of"),  # its old name
        (["calibrate", "--lengths", ""], "--lengths is empty"),
        (["calibrate", "--lengths", " , "], "--lengths is empty"),
        (
            ["calibrate", "--lengths", "64", "--topk", "64", "--no-save"],
            "--topk 64 must be smaller",
        ),
        (["calibrate", "--lengths", "100,64", "-k", "80"], "shortest haystack (64 tokens"),
        (["calibrate", "--needles", "1"], "--topk 256 must be smaller"),  # default lengths: 128
        (["ask", "{dir}", "q"], "is a directory"),
    ],
)
def test_bad_input_is_one_line_error(tiny_dir, doc_file, tmp_path, args, needle):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "long.txt").write_text("lighthouse " * 400)
    paths = {
        "doc": doc_file,
        "empty": str(tmp_path / "empty.txt"),
        "long": str(tmp_path / "long.txt"),
        "dir": str(tmp_path),
    }
    args = [a.format(**paths) for a in args] + ["-m", tiny_dir]
    assert_one_line_error(invoke(*args), needle)


def test_empty_stdin_and_binary_file_are_errors(tiny_dir, tmp_path):
    assert_one_line_error(invoke("ask", "-", "q", "-m", tiny_dir, stdin=""), "empty")
    (tmp_path / "bin.dat").write_bytes(b"\xff\xfe\x00\x81")
    assert_one_line_error(invoke("ask", str(tmp_path / "bin.dat"), "q", "-m", tiny_dir), "binary")


def test_stray_invalid_bytes_are_replaced_with_a_warning(tiny_dir, tmp_path):
    raw = b"The key is blue. " * 5 + b"\xff\xfe" + b" The door is red."
    (tmp_path / "doc.txt").write_bytes(raw)
    r = invoke("gemfilter", str(tmp_path / "doc.txt"), "q", "-m", tiny_dir, "--topk", "1000")
    assert r.exit_code == 0, r.output
    assert "2 undecodable" in r.stderr and "The door is red." in r.stdout
    assert "\ufffd" in r.stdout  # replaced, not dropped


def test_calibrate_stores_choice_that_auto_uses(tiny_dir, doc_file, tmp_path):
    r = invoke(
        "calibrate",
        "-m",
        tiny_dir,
        "--lengths",
        "80,120",
        "--needles",
        "1",
        "--topk",
        "16",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert len(out["accuracy"]) == 3 and 0 <= out["layer"] < 3 and out["cases"] == 6
    assert out["stored_at"].startswith(str(tmp_path / "cache"))
    r = invoke("ask", doc_file, "q", "-m", tiny_dir, "--max-new-tokens", "2", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["layer"] == out["layer"]
    assert "calibrated" in r.stderr
    r = invoke("calibrate", "-m", tiny_dir, "--lengths", "80", "--needles", "1", "-k", "16")
    assert r.exit_code == 0 and "chosen" in r.stdout and "layer" in r.stdout


def test_a_document_over_the_context_is_filtered_in_segments(tiny_dir, tmp_path):
    path = tmp_path / "long.txt"
    path.write_text(" ".join(f"Line {i} of the log is fine." for i in range(150)))
    r = invoke(
        "gemfilter",
        str(path),
        "Which line?",
        "-m",
        tiny_dir,
        "-k",
        "40",
        "--unit",
        "token",
        "--json",
    )
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["prompt_tokens"] > 256 and out["segments"] >= 3
    assert f"filtering the document in {out['segments']} segments" in " ".join(r.stderr.split())
    assert len(out["indices"]) == 40 and out["indices"] == sorted(out["indices"])
    assert max(out["indices"]) < out["document_tokens"]
    r = invoke(
        "ask",
        str(path),
        "Which line?",
        "-m",
        tiny_dir,
        "-k",
        "40",
        "--json",
        "--max-new-tokens",
        "3",
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["segments"] == out["segments"] and res["selected_tokens"] < 256
    assert res["config"]["split"] is True
    r = invoke(
        "gemfilter",
        "-",
        "Boats?",
        "-m",
        tiny_dir,
        "-k",
        "4",
        "--segment-tokens",
        "8",
        "--json",
        stdin=DOC,
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["segments"] >= 3 and "--segment-tokens 8" in r.stderr


def test_gemfilter_sentence_unit_prints_whole_sentences(tiny_dir):
    r = invoke(
        "gemfilter",
        "-",
        "Boats?",
        "-m",
        tiny_dir,
        "--layer",
        "2",
        "-k",
        "12",
        "--unit",
        "sentence",
        "--gap",
        "|",
        stdin=DOC,
    )
    assert r.exit_code == 0, r.output
    sentences = {
        "The lighthouse keeper painted the door green.",
        "Boats came home at dusk.",
        "The bell rang twice.",
    }
    pieces = [p.strip() for p in r.stdout.strip().split("|")]
    parts = [x for p in pieces for x in p.replace(". ", ".\n").splitlines()]  # adjacent runs join
    assert parts and all(x in sentences for x in parts), pieces
    assert sum(len(x.split()) for x in parts) < len(DOC.split())  # a real selection


def _naive_shown(kept, n, context, min_gap):
    """Token by token: near a kept token, or in a short stretch between shown tokens or ends."""
    if not kept:
        return []
    shown = [any(abs(i - k) <= context for k in kept) for i in range(n)]
    i = 0
    while i < n:
        if shown[i]:
            i += 1
            continue
        j = i
        while j < n and not shown[j]:
            j += 1
        if j - i < min_gap:
            shown[i:j] = [True] * (j - i)
        i = j
    runs, i = [], 0
    while i < n:
        if shown[i]:
            j = i
            while j < n and shown[j]:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def test_show_elides_long_stretches_like_a_naive_token_walk():
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(1, 400, (1,), generator=gen))
        m = int(torch.randint(0, min(n, 12) + 1, (1,), generator=gen))
        kept = sorted(torch.randperm(n, generator=gen)[:m].tolist())
        ctx, gap = (
            int(torch.randint(0, 20, (1,), generator=gen)),
            int(torch.randint(1, 60, (1,), generator=gen)),
        )
        assert shown_ranges(kept, n, ctx, gap) == _naive_shown(kept, n, ctx, gap), (kept, n)


def test_show_on_a_long_document_prints_the_kept_parts_not_the_whole(tiny_dir, tmp_path):
    words = " ".join(f"w{i}." for i in range(700))
    path = tmp_path / "long.txt"
    path.write_text(words)
    r = invoke(
        "ask",
        str(path),
        "Which word?",
        "-m",
        tiny_dir,
        "--layer",
        "1",
        "--topk",
        "6",
        "--unit",
        "token",
        "--max-new-tokens",
        "2",
        "--show",
    )
    assert r.exit_code == 0, r.output
    assert "tokens ...]" in r.stderr and "selected 6 of" in r.stderr
    # stderr is no terminal here: with no colour, each kept run is bracketed instead
    assert 1 <= r.stderr.count("⟦") == r.stderr.count("⟧") <= 6
    assert len(r.stderr) < len(words) / 2


def test_undecodable_bytes_in_the_question_are_replaced_with_a_warning(tiny_dir, doc_file):
    # argv bytes that are not UTF-8 reach us as surrogate escapes: b"\xff" -> "\udcff"
    question = b"What is the \xff password?".decode("utf-8", "surrogateescape")
    assert clean_question(question) == ("What is the \ufffd password?", 1)
    assert clean_question("plain") == ("plain", 0)
    for extra in (
        ["ask", doc_file, question, "--max-new-tokens", "2"],
        ["gemfilter", doc_file, question],
    ):
        r = invoke(*extra, "-m", tiny_dir, "-k", "8")
        assert r.exit_code == 0, r.output
        assert "1 undecodable byte(s) in the question" in " ".join(r.stderr.split())


def test_a_pipe_is_read_like_a_file(tiny_dir, tmp_path):
    fifo, writer = fifo_with_writer(tmp_path, DOC)
    try:
        r = invoke("gemfilter", str(fifo), "Boats?", "-m", tiny_dir, "--top-k", "1000")
    finally:
        if writer.is_alive():  # the command never opened the pipe: release the writer
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        writer.join(5)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == DOC


def test_status_line_names_the_dtype_like_info(tiny_dir, doc_file):
    info = invoke("info", "-m", tiny_dir, "--dtype", "fp32", "--json")
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["dtype"] == "fp32"
    r = invoke("gemfilter", doc_file, "q", "-m", tiny_dir, "--dtype", "fp32", "-k", "8")
    assert r.exit_code == 0, r.output
    assert "cpu, fp32)" in r.stderr and "float32" not in r.stderr


def test_help_texts_match_the_options(tiny_dir):
    r = runner.invoke(app, ["gemfilter", "--help"], env={"COLUMNS": "400"})  # one line each
    assert r.exit_code == 0, r.output
    text = " ".join(r.stdout.split())
    assert "--protect" not in text and "answer pass" not in text
    assert "runs (default: ' … ')." in text and "0 = as many as fit" in text
