"""The `sepcli serve` command itself, as a process: it says where it listens, SIGTERM lets the
request in flight finish and exits 0 after writing the conversations to --session-dir, and a
restarted server continues a conversation from there with the reply `sepcli chat` gives."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepcli.cli import app as cli

from helpers import build_tiny_llama

openai = pytest.importorskip("openai", reason="the serve tests need the openai client (dev extra)")
pytest.importorskip("uvicorn", reason="sepcli serve needs the serve extra")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]
TURNS = ["Hello there", "What is a ring buffer?", "Thanks, and why?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-serve-process")
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=7, initializer_range=0.3
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A `sepcli serve` process, waited for until /health answers; killed if it hangs."""

    def __init__(self, args, port: int):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "sepcli", "serve", "--port", str(port), *args]
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="none", max_retries=0)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"sepcli serve exited: {self.proc.communicate()[1]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2).close()
                return
            except OSError:
                time.sleep(0.2)
        self.kill()
        pytest.fail("sepcli serve did not start")

    def stop(self, timeout: float = 30) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("sepcli serve did not stop on SIGTERM")
        return self.proc.returncode, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


@pytest.fixture
def served():
    started = []

    def start(args, port):
        s = Served(args, port)
        started.append(s)
        s.wait_ready()
        return s

    yield start
    for s in started:
        s.kill()


def test_sigterm_finishes_the_request_in_flight_and_a_restart_continues_from_disk(
    served, tiny_dir, tmp_path
):
    runner = CliRunner()
    result = runner.invoke(
        cli,
        ["chat", "--model", tiny_dir, "--dtype", "fp32", *SMALL, "-n", "12"],
        input="\n".join(TURNS) + "\n",
    )
    want = [json.loads(x)["reply"] for x in result.stdout.splitlines() if x.startswith("{")]
    sessions = tmp_path / "sessions"
    args = ["--model", tiny_dir, "--dtype", "fp32", *SMALL, "--session-dir", str(sessions)]
    port = free_port()
    first = served(args, port)
    messages = []
    for user, reply in zip(TURNS[:2], want, strict=False):
        messages.append({"role": "user", "content": user})
        r = first.client.chat.completions.create(model="m", messages=messages, max_tokens=12)
        assert r.choices[0].message.content == reply
        messages.append({"role": "assistant", "content": reply})

    # a long reply in flight when SIGTERM comes: it is finished, then the server exits 0
    chunks = []
    other = [{"role": "user", "content": "Write a lot"}]
    stream = first.client.chat.completions.create(
        model="m", messages=other, max_tokens=150, stream=True, extra_body={"ignore_eos": True}
    )
    reader = threading.Thread(target=lambda: chunks.extend(stream))
    reader.start()
    while len(chunks) < 3:
        time.sleep(0.01)
    code, err = first.stop()
    reader.join(30)
    assert code == 0, err
    assert f"on http://127.0.0.1:{port}/v1" in err and "Traceback" not in err
    assert chunks[-1].usage.completion_tokens == 150
    assert len(list(sessions.glob("*.ckpt"))) == 2  # both conversations were written

    again = served(args, port)
    messages.append({"role": "user", "content": TURNS[2]})
    r = again.client.chat.completions.create(model="m", messages=messages, max_tokens=12)
    assert r.choices[0].message.content == want[2]
    assert r.usage.prompt_tokens_details.cached_tokens > 0  # continued, not read afresh
    code, err = again.stop()
    assert code == 0, err
