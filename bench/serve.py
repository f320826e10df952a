"""`sepcli serve` against `llama-server`, both through the `openai` client on loopback.

Two benchmarks (docs/serve.md), each run against both servers on the same GGUF (the embedded
SmolLM2-135M-Instruct Q4_1 file), the same turns and the same reply length:

- ``turns``: one conversation of ``--turns`` turns, the whole history sent every turn (as every
  OpenAI client does). Per turn: wall time, prompt tokens, cached tokens, server RSS, and what
  the server answered when it could not go on (llama-server passes its context: its error, a
  shift or a truncation is recorded as it comes). Summary: time per turn at the last turns
  against turns 6-15, RSS growth after turn 10.
- ``load``: ``--clients`` conversations at once, ``--turns`` turns each. Failed requests,
  aggregate generated tokens/s, p50/p95 time per turn, peak RSS.

Each server is started as a process on a free port and stopped at the end. llama-server runs
with its default settings and ``cache_prompt: true`` in each request (its prompt cache), built
by ``bench/peer_llamacpp.py``'s tree (``--llama-server PATH`` to use another; missing: that side
is skipped with a note). Replies have a fixed length (``ignore_eos``, which both servers accept)
so turns cost the same work. Timings want a quiet machine::

    flock /tmp/sepcli-bench.lock python bench/serve.py turns --turns 300
    flock /tmp/sepcli-bench.lock python bench/serve.py load --clients 8 --turns 30

Results: bench/results/serve_<bench>.json (rewritten as it goes).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from common import ROOT, command, machine, write_result

try:
    import openai
except ImportError:  # pragma: no cover - the dev extra installs it
    raise SystemExit("bench/serve.py needs the openai client: pip install openai") from None

from sepcli.models import embedded_gguf_path
from sepcli.texts import essays_text


def llama_server_default() -> Path:
    from peer_llamacpp import tool

    return tool("llama-server")


# ---------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Server:
    """A server process on a free port; ``name`` says which."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict | None = None):
        self.name, self.port = name, port
        log = Path(tempfile.gettempdir()) / f"sepcli-bench-serve-{name}.log"
        self.log = open(log, "w")  # noqa: SIM115 - open for the process's life
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self.url = f"http://127.0.0.1:{port}"
        self.client = openai.OpenAI(
            base_url=self.url + "/v1", api_key="none", max_retries=0, timeout=600
        )
        self.peak = 0.0
        self._watch = threading.Event()

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited; see {self.log.name}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise SystemExit(f"{self.name} did not start within {timeout} s")

    def rss(self) -> float:
        value = rss_mb(self.proc.pid)
        self.peak = max(self.peak, value)
        return value

    def watch_peak(self) -> None:
        """Sample RSS every 50 ms until :meth:`stop` (the peak of a load run)."""

        def loop():
            while not self._watch.wait(0.05):
                try:
                    self.rss()
                except OSError:
                    return

        threading.Thread(target=loop, daemon=True).start()

    def stop(self) -> None:
        self._watch.set()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_sepcli(args) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "sepcli", "serve", "--port", str(port)]
    cmd += ["--model", "smollm2", "--sessions", str(max(8, args.clients)), "--save-idle", "0"]
    cmd += ["--max-tokens-limit", str(max(4096, args.max_tokens))]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = Server("sepcli", cmd, port, env)
    server.wait_ready()
    return server


def start_llama(args) -> Server | None:
    binary = Path(args.llama_server) if args.llama_server else llama_server_default()
    if not binary.is_file():
        print(f"note: no llama-server at {binary}: that side is skipped", file=sys.stderr)
        return None
    port = free_port()
    cmd = [str(binary), "-m", str(embedded_gguf_path()), "--host", "127.0.0.1"]
    cmd += ["--port", str(port)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.clients > 1:
        cmd += ["--parallel", str(args.clients)]  # one slot per conversation, as its docs say
    server = Server("llama-server", cmd, port)
    server.wait_ready()
    return server


# ---------------------------------------------------------------------- a conversation


def user_turns(n: int, offset: int = 0) -> list[str]:
    """``n`` user messages: sentences of the bundled essays, a few per turn (some 40 tokens)."""
    words = essays_text(max_chars=400_000).split()
    out = []
    for i in range(n):
        start = ((i + offset) * 29) % max(1, len(words) - 30)
        out.append("Tell me more about this: " + " ".join(words[start : start + 25]))
    return out


def one_turn(server: Server, messages: list[dict], max_tokens: int) -> dict:
    """One request; -> the turn's record (and the reply appended to ``messages``)."""
    extra = {"ignore_eos": True}
    if server.name == "llama-server":
        extra["cache_prompt"] = True
    start = time.perf_counter()
    try:
        r = server.client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=max_tokens, extra_body=extra
        )
    except openai.APIError as exc:
        status = getattr(exc, "status_code", None)
        return {"ok": False, "s": time.perf_counter() - start, "status": status, "error": str(exc)}
    elapsed = time.perf_counter() - start
    reply = r.choices[0].message.content or ""
    messages.append({"role": "assistant", "content": reply})
    details = getattr(r.usage, "prompt_tokens_details", None)
    return {
        "ok": True,
        "s": elapsed,
        "prompt_tokens": r.usage.prompt_tokens,
        "cached_tokens": getattr(details, "cached_tokens", None),
        "completion_tokens": r.usage.completion_tokens,
        "finish": r.choices[0].finish_reason,
        "reply_chars": len(reply),
    }


def conversation(server: Server, turns: list[str], max_tokens: int, on_turn=None) -> list[dict]:
    messages, rows, failures = [], [], 0
    for i, user in enumerate(turns, start=1):
        messages.append({"role": "user", "content": user})
        row = {"turn": i, **one_turn(server, messages, max_tokens)}
        if not row["ok"]:
            messages.pop()  # as a client would: the failed message is not in the history
            failures += 1
        else:
            failures = 0
        if on_turn is not None:
            on_turn(row)
        rows.append(row)
        if failures >= 3:  # it will not go on: record that and stop
            rows.append({"turn": i, "stopped": "three failed turns in a row"})
            break
    return rows


def window(rows: list[dict], first: int, last: int) -> float | None:
    times = [r["s"] for r in rows if r.get("ok") and first <= r["turn"] <= last]
    return statistics.median(times) if times else None


# ---------------------------------------------------------------------- the benchmarks


def bench_turns(args) -> None:
    turns = user_turns(args.turns)
    result = {"command": command(), "machine": machine(), "turns": args.turns}
    result["max_tokens"] = args.max_tokens
    for start in (start_sepcli, start_llama):
        server = start(args)
        if server is None:
            continue
        try:

            def on_turn(row, server=server):
                row["rss_mb"] = round(server.rss(), 1)
                print(f"{server.name} turn {row['turn']}: {row}", file=sys.stderr, flush=True)

            rows = conversation(server, turns, args.max_tokens, on_turn)
        finally:
            server.stop()
        ok = [r for r in rows if r.get("ok")]
        early = window(rows, 6, 15)
        late = window(rows, args.turns - 9, args.turns)
        rss10 = next((r["rss_mb"] for r in rows if r.get("turn") == 10 and "rss_mb" in r), None)
        rss_end = ok[-1]["rss_mb"] if ok else None
        failed = [r for r in rows if r.get("ok") is False]
        result[server.name] = {
            "turn_s_6_15": early,
            "turn_s_last10": late,
            "late_over_early": None if not (early and late) else late / early,
            "rss_mb_turn10": rss10,
            "rss_mb_end": rss_end,
            "rss_growth_after_10": None if not (rss10 and rss_end) else rss_end / rss10 - 1,
            "failed_turns": len(failed),
            "first_failure": failed[0] if failed else None,
            "rows": rows,
        }
        write_result("serve_turns.json", result)


def bench_load(args) -> None:
    result = {"command": command(), "machine": machine(), "clients": args.clients}
    result.update(turns=args.turns, max_tokens=args.max_tokens)
    for start in (start_sepcli, start_llama):
        server = start(args)
        if server is None:
            continue
        rows: list[list[dict]] = [[] for _ in range(args.clients)]
        try:
            server.watch_peak()
            began = time.perf_counter()

            def client(i, server=server, rows=rows):
                rows[i] = conversation(server, user_turns(args.turns, 1000 * i), args.max_tokens)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - began
        finally:
            server.stop()
        flat = [r for conv in rows for r in conv if "ok" in r]
        ok = [r for r in flat if r["ok"]]
        times = sorted(r["s"] for r in ok)
        generated = sum(r["completion_tokens"] for r in ok)
        result[server.name] = {
            "requests": len(flat),
            "failed": len(flat) - len(ok),
            "wall_s": wall,
            "tok_per_s": generated / wall if wall else None,
            "turn_s_p50": statistics.median(times) if times else None,
            "turn_s_p95": times[int(0.95 * (len(times) - 1))] if times else None,
            "peak_rss_mb": server.peak,
            "rows": rows,
        }
        print(f"{server.name}: {result[server.name] | {'rows': '...'}}", file=sys.stderr)
        write_result("serve_load.json", result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    for name, turns in (("turns", 300), ("load", 30)):
        p = sub.add_parser(name)
        p.add_argument("--turns", type=int, default=turns, help="turns per conversation")
        if name == "load":
            p.add_argument("--clients", type=int, default=8, help="conversations at once")
        p.add_argument("--max-tokens", type=int, default=32, help="reply length (ignore_eos)")
        p.add_argument("--threads", type=int, default=None, help="each server's CPU threads")
        p.add_argument("--llama-server", default=None, help="llama-server binary")
        p.add_argument("--no-llama", action="store_true", help="sepcli serve only")
    args = parser.parse_args()
    if args.bench == "turns":
        args.clients = 1
    if args.no_llama:
        args.llama_server = "/nonexistent"
    (bench_turns if args.bench == "turns" else bench_load)(args)


if __name__ == "__main__":
    main()
