"""`sepcli generate` and `sepcli chat` through Typer's CliRunner with a tiny local model:
output against the library, JSON lines, checkpoint/resume, the REPL's commands, and one-line
errors for bad input."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.generate.decode import GenerateConfig, generate
from sepcli.models import load_model
from sepcli.stream.config import StreamConfig

from helpers import build_tiny_llama

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-gen-model")
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=7, initializer_range=0.3
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def run(cmd, args, input=None):
    return CliRunner().invoke(app, [cmd, *args], input=input)


def base(tiny_dir, *extra):
    return ["--model", tiny_dir, "--dtype", "fp32", *SMALL, *extra]


def jsonl(result):
    return [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]


# ---------------------------------------------------------------------- generate


def test_generate_streams_what_the_library_generates(tiny_dir):
    args = base(tiny_dir, "--prompt", "The printing press", "-n", "60", "--ignore-eos")
    plain = run("generate", args)
    assert plain.exit_code == 0, plain.output
    summary = jsonl(run("generate", [*args, "--json"]))[-1]
    lm = load_model(tiny_dir, device="cpu", dtype="fp32")
    cfg = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)
    tokens = list(
        generate(
            lm.model, lm.tokenizer, "The printing press", cfg, GenerateConfig(60, ignore_eos=True)
        )
    )
    want = "".join(t.text for t in tokens)
    assert plain.stdout == want == summary["text"]
    assert summary["new_tokens"] == 60 and summary["stop_reason"] == "max"
    assert summary["prompt_tokens"] == 4 and summary["cache_capacity"] == 40
    assert summary["cache_used"] <= 40 and summary["config"]["capacity"] == 40
    for key in ("prefill_tok_per_s", "decode_tok_per_s", "peak_rss_mb"):
        assert summary[key] > 0


def test_generate_stop_string_and_sampling_seed(tiny_dir):
    args = base(tiny_dir, "--prompt", "Once", "-n", "40", "--ignore-eos", "--json")
    sampled = [*args, "--temperature", "0.9", "--top-p", "0.95", "--seed", "5"]
    a, b = (jsonl(run("generate", sampled))[-1] for _ in range(2))
    c = jsonl(run("generate", [*sampled[:-1], "6"]))[-1]
    assert a["text"] == b["text"] != c["text"]
    word = a["text"].split()[3]
    cut = jsonl(run("generate", [*sampled, "--stop", word]))[-1]
    assert cut["stop_reason"] == "stop" and word not in cut["text"]
    assert a["text"].startswith(cut["text"])


def test_generate_reads_a_prompt_file_and_reports_its_perplexity(tiny_dir, tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("One two three. " * 40)
    result = run("generate", [str(path), *base(tiny_dir, "-n", "5", "--ppl", "--json")])
    summary = jsonl(result)[-1]
    assert result.exit_code == 0 and summary["prompt_tokens"] > 100
    assert summary["prompt_ppl"] > 1 and summary["cache_used"] <= 40


def test_empty_prompt_starts_from_bos_with_a_warning(tiny_dir):
    result = run("generate", base(tiny_dir, "-n", "5", "--json"), input="")
    assert result.exit_code == 0, result.output
    assert jsonl(result)[-1]["prompt_tokens"] == 1 and "prompt is empty" in result.stderr


def test_undecodable_prompt_bytes_are_replaced_with_a_warning(tiny_dir):
    result = run("generate", ["-", *base(tiny_dir, "-n", "3", "--json")], input=b"caf\xe9 \xff ok")
    assert result.exit_code == 0, result.output
    assert jsonl(result)[-1]["replaced_chars"] == 2 and "U+FFFD" in result.stderr


@pytest.mark.parametrize(
    "args, stdin, match",
    [
        (["-n", "-1"], "x", "--max-new-tokens"),
        (["-n", "many"], "x", "many"),
        (["--temperature", "-1"], "x", "--temperature"),
        (["--top-p", "0"], "x", "--top-p"),
        (["--top-p", "1.5"], "x", "--top-p"),
        (["--top-k", "-2"], "x", "--top-k"),
        (["/no/such/file.txt"], None, "no such file"),
        (["{tmp}"], None, "is a directory"),
        (["{binary}"], None, "binary"),
        (["{tmp}/p.txt", "--prompt", "x"], None, "not both"),
        (["--method", "full", "--prompt", "x", "-n", "600", "--ignore-eos"], None, "context"),
    ],
)
def test_generate_bad_input_is_one_line_error(tiny_dir, tmp_path, args, stdin, match):
    (tmp_path / "bin.dat").write_bytes(b"\x7fELF\x00\x00\x01" * 100)
    (tmp_path / "p.txt").write_text("hello")
    args = [a.format(tmp=tmp_path, binary=tmp_path / "bin.dat") for a in args]
    result = run("generate", [*args, "--model", tiny_dir, "--dtype", "fp32"], input=stdin)
    assert result.exit_code == 2, result.output
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert lines[-1].startswith("error:") and match in lines[-1]
    assert "Traceback" not in result.output


def _cli(*args):
    return [sys.executable, "-m", "sepcli", *args]


def test_closed_stdout_exits_quietly(tiny_dir):
    cmd = " ".join(_cli("generate", *base(tiny_dir), "--prompt", "x", "-n", "0", "--ignore-eos"))
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {cmd} | head -c 100 > /dev/null"],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr


def test_generate_to_a_file_with_stderr_on_a_terminal(tiny_dir, tmp_path):
    """`generate ... > out.txt` from a terminal: stdout is a file, stderr a terminal (a pty),
    so the live status line runs; the text must still land in the file, not on the terminal."""
    args = base(tiny_dir, "--prompt", "The printing press", "-n", "30", "--ignore-eos")
    want = run("generate", args).stdout
    assert want.strip()
    master, slave = pty.openpty()
    out = tmp_path / "out.txt"
    with open(out, "wb") as handle:
        proc = subprocess.Popen(
            _cli("generate", *args),
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1", "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=slave,
        )
    os.close(slave)
    seen = bytearray()
    while True:  # drain the terminal, or a full pty buffer would block the child
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        seen += data
    os.close(master)
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")
    assert out.read_text() == want
    assert "new tokens after" in seen.decode(errors="replace")  # the summary went to stderr


def test_sigint_stops_endless_generation_with_the_summary(tiny_dir):
    proc = subprocess.Popen(
        _cli("generate", *base(tiny_dir), "--prompt", "x", "-n", "0", "--ignore-eos", "--json"),
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while "generate:" not in proc.stderr.readline():  # the config line: the model is loaded
        pass
    import time

    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["stop_reason"] == "interrupt" and summary["new_tokens"] > 0
    assert "Traceback" not in err


# ---------------------------------------------------------------------- chat


def test_chat_jsonl_turns_flow_into_one_ring(tiny_dir):
    turns = 'Hello there\n\n{"user": "What is a ring buffer?"}\nThanks\n'
    result = run("chat", base(tiny_dir, "-n", "12"), input=turns)
    assert result.exit_code == 0, result.output
    out = jsonl(result)
    assert [o["turn"] for o in out] == [1, 2, 3]
    assert [o["user"] for o in out] == ["Hello there", "What is a ring buffer?", "Thanks"]
    for prev, cur in zip(out, out[1:], strict=False):
        # the next turn fed only its own text (plus the pending reply token), nothing re-encoded
        assert (
            cur["total_tokens"]
            == prev["total_tokens"] + cur["prompt_tokens"] + cur["new_tokens"] - 1
        )
    assert all(o["cache_used"] <= 40 and o["new_tokens"] <= 12 for o in out)


def test_chat_checkpoint_resume_equals_one_session(tiny_dir, tmp_path):
    ck = tmp_path / "chat.ckpt"
    args = base(tiny_dir, "-n", "10", "--temperature", "0.8", "--seed", "3")
    whole = jsonl(run("chat", args, input="a\nb\nc\n"))
    first = run("chat", [*args, "--checkpoint", str(ck)], input="a\nb\n")
    assert first.exit_code == 0 and ck.is_file(), first.output
    rest = run("chat", [*args, "--resume", str(ck)], input="c\n")
    assert rest.exit_code == 0, rest.output

    def strip(out):
        return [{k: v for k, v in o.items() if k != "decode_tok_per_s"} for o in out]

    assert strip(jsonl(rest)) == strip(whole[2:])
    fresh = jsonl(run("chat", args, input="c\n"))[0]
    assert fresh["reply"] != whole[2]["reply"]  # the resumed ring really held turns 1-2


def test_chat_refuses_a_stream_checkpoint_or_another_config(tiny_dir, tmp_path):
    ck = tmp_path / "s.ckpt"
    run("stream", ["-", *base(tiny_dir), "--checkpoint", str(ck), "--json"], input="some text here")
    result = run("chat", [*base(tiny_dir), "--resume", str(ck)], input="hi\n")
    assert result.exit_code == 2 and "kind is 'stream' there, 'chat' here" in result.stderr
    ck2 = tmp_path / "c.ckpt"
    run("chat", [*base(tiny_dir, "-n", "3"), "--checkpoint", str(ck2)], input="hi\n")
    other = [a if a != "40" else "44" for a in base(tiny_dir)]
    result = run("chat", [*other, "--resume", str(ck2)], input="hi\n")
    assert result.exit_code == 2 and "config.capacity is 40 there, 44 here" in result.stderr


def test_chat_turns_file_and_malformed_lines(tiny_dir, tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text('{"user": "one"}\ntwo\n')
    result = run("chat", [*base(tiny_dir, "-n", "4"), "--turns", str(good)])
    assert result.exit_code == 0 and len(jsonl(result)) == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user": "one"}\n{"user": \n')
    ck = tmp_path / "never.ckpt"
    result = run("chat", [*base(tiny_dir), "--turns", str(bad), "--checkpoint", str(ck)])
    assert result.exit_code == 2 and "line 2" in result.stderr and not ck.exists()
    result = run("chat", base(tiny_dir, "-n", "4"), input='hi\n{"usr": "x"}\n')
    assert result.exit_code == 2 and "stdin line 2" in result.stderr
    assert len(jsonl(result)) == 1  # the turn before the bad line was answered


def test_chat_full_method_refuses_cleanly_at_the_context_limit(tiny_dir):
    turns = "\n".join(f"Tell me about topic number {i} at length." for i in range(40))
    result = run(
        "chat",
        ["--model", tiny_dir, "--dtype", "fp32", "--method", "full", "-n", "30"],
        input=turns,
    )
    assert result.exit_code == 2, result.output
    assert "context of 512" in result.stderr and "Traceback" not in result.output
    out = jsonl(result)
    assert out and out[-1]["total_tokens"] <= 512


def test_chat_without_a_template_uses_the_plain_format(tiny_dir, tmp_path, tokenizer):
    folder = tmp_path / "plain"
    build_tiny_llama(len(tokenizer), layers=1, hidden=32, heads=2, kv_heads=1).save_pretrained(
        folder
    )
    tokenizer.save_pretrained(folder)
    for name in ("chat_template.jinja", "chat_template.json"):
        (folder / name).unlink(missing_ok=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    result = run("chat", ["--model", str(folder), "--dtype", "fp32", "-n", "4"], input="hi\n")
    assert result.exit_code == 0, result.output
    assert "no chat template" in result.stderr and len(jsonl(result)) == 1


def test_repl_commands(tiny_dir, tmp_path, monkeypatch, capsys):
    from sepcli.commands import chat as chat_cmd
    from sepcli.commands.chat_repl import Repl
    from sepcli.generate.chat import ChatSession

    lm = load_model(tiny_dir, device="cpu", dtype="fp32")
    cfg = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)
    session = ChatSession(lm.model, lm.tokenizer, cfg, GenerateConfig(6))
    saved = []
    lines = iter(
        ["hello", "/stats", "/save", f"/save {tmp_path}/x", "/nope", "again", "/reset", "/help"]
    )

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    Repl(session, saved.append, chat_cmd.describe).run()
    assert saved == [f"{tmp_path}/x"]
    assert session.turns == []  # /reset came after the two turns
    assert session.engine.seen == 0
    err = capsys.readouterr().err
    assert "usage:" in err and "unknown command /nope" in err and "/reset" in err


def test_chat_save_refuses_to_overwrite_a_file_that_is_not_a_checkpoint(tiny_dir, tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("precious")
    result = run("chat", [*base(tiny_dir, "-n", "3"), "--checkpoint", str(keep)], input="hi\n")
    assert result.exit_code == 2 and "refusing to overwrite" in result.stderr
    assert keep.read_text() == "precious"
