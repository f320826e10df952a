"""`sepcli serve` with a real client: the official `openai` package against a real server on a
free port of 127.0.0.1, serving a tiny seeded Llama with the real SmolLM2 tokenizer.

References are independent of the server: `sepcli chat` in JSONL mode for the same turns and
config, `sepcli score` for the same text, the chat template rendered by the tokenizer, and the
same conversations run one at a time. Most tests run the server in this process (uvicorn on a
thread: a real socket, started and stopped per test); tests/test_serve_process.py runs the
`sepcli serve` command itself.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from sepcli.cli import app as cli
from sepcli.generate.decode import GenerateConfig
from sepcli.models import load_model
from sepcli.serve.config import ServeConfig
from sepcli.stream.config import StreamConfig

from helpers import build_tiny_llama

openai = pytest.importorskip("openai", reason="the serve tests need the openai client (dev extra)")
uvicorn = pytest.importorskip("uvicorn", reason="sepcli serve needs the serve extra")
from sepcli.serve import app as serve_app  # noqa: E402  (after the skip: needs uvicorn)

SMALL = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)
SMALL_ARGS = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]
TURNS = ["Hello there", "What is a ring buffer?", "Thanks, and why?"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-serve-model")
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=7, initializer_range=0.3
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return load_model(tiny_dir, device="cpu", dtype="fp32")


class _ThreadServer(uvicorn.Server):
    def capture_signals(self):  # signals belong to the main thread (pytest's)
        import contextlib

        return contextlib.nullcontext()


@pytest.fixture
def serve(lm, seps):
    """``serve(stream=SMALL, **ServeConfig fields) -> (client, base_url, server)``: a server
    on a free port, stopped at the end of the test (the thread is given 20 s to finish)."""
    running = []

    def start(stream: StreamConfig = SMALL, api_key=None, **fields):
        config = ServeConfig(host="127.0.0.1", port=0, api_key=api_key, **fields)
        server = serve_app.make_server(lm, stream, config, separators=seps)
        sock = serve_app.listen("127.0.0.1", 0)
        uv = _ThreadServer(
            uvicorn.Config(serve_app.build_app(server), log_level="error", lifespan="on")
        )
        thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        deadline = time.monotonic() + 20
        while not uv.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)
        running.append((uv, thread, sock))
        client = openai.OpenAI(base_url=url + "/v1", api_key=api_key or "none", max_retries=0)
        return client, url, server

    yield start
    for uv, thread, sock in running:
        uv.should_exit = True
        thread.join(20)
        if thread.is_alive():  # a hung shutdown: force it, and fail the test
            uv.force_exit = True
            thread.join(5)
            pytest.fail("the server did not stop within 20 s")
        sock.close()


def health(url: str) -> dict:
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.loads(r.read())


def talk(client, turns, max_tokens=12, system=None, **extra):
    """A conversation through the API, the whole history sent each turn -> the responses."""
    messages = [{"role": "system", "content": system}] if system else []
    out = []
    for user in turns:
        messages.append({"role": "user", "content": user})
        r = client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=max_tokens, **extra
        )
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
        out.append(r)
    return out


def sepcli_chat(tiny_dir, turns, n=12):
    result = CliRunner().invoke(
        cli,
        ["chat", "--model", tiny_dir, "--dtype", "fp32", *SMALL_ARGS, "-n", str(n)],
        input="\n".join(turns) + "\n",
    )
    assert result.exit_code == 0, result.output
    return [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]


# ---------------------------------------------------------------------- conversations


def test_greedy_chat_over_the_api_equals_sepcli_chat_and_feeds_only_new_tokens(
    serve, tiny_dir, tokenizer
):
    want = sepcli_chat(tiny_dir, TURNS)
    client, url, _ = serve()
    fed = [health(url)["counters"]["prompt_tokens_fed"]]
    got = []
    messages = []
    for user in TURNS:
        messages.append({"role": "user", "content": user})
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
        got.append(r)
        messages.append({"role": "assistant", "content": r.choices[0].message.content})
        fed.append(health(url)["counters"]["prompt_tokens_fed"])
    assert [r.choices[0].message.content for r in got] == [w["reply"] for w in want]
    assert [r.usage.completion_tokens for r in got] == [w["new_tokens"] for w in want]
    finish = {"eos": "stop", "max": "length", "stop": "stop"}
    assert [r.choices[0].finish_reason for r in got] == [finish[w["stop_reason"]] for w in want]
    # each resent history fed only its new turn: the tokens `chat` fed for that turn
    per_turn = [b - a for a, b in zip(fed, fed[1:], strict=False)]
    assert per_turn == [w["prompt_tokens"] for w in want]
    for r, w in zip(got[1:], want[1:], strict=True):
        details = r.usage.prompt_tokens_details
        assert details.cached_tokens == r.usage.prompt_tokens - w["prompt_tokens"] > 0
    # an edited history matches nothing: read afresh, every token of it, as the template says
    messages[0]["content"] = "Hello there, edited"
    before = health(url)["counters"]["prompt_tokens_fed"]
    r = client.chat.completions.create(model="tiny", messages=messages[:-1], max_tokens=4)
    rendered = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full = len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert health(url)["counters"]["prompt_tokens_fed"] - before == full
    assert r.usage.prompt_tokens_details.cached_tokens == 0 and r.usage.prompt_tokens == full


def test_streamed_chunks_join_to_the_reply_and_end_with_usage(serve):
    client, _, _ = serve()
    msgs = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20)
    chunks = list(
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1
    # stop strings: the text is cut before the first one
    word = text.split()[2]
    cut = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=20, stop=[word])
    assert cut.choices[0].message.content == text[: text.index(word)]
    assert cut.choices[0].finish_reason == "stop"


def test_completions_echo_logprobs_equal_sepcli_score(serve, tiny_dir, tmp_path):
    from sepcli.texts import essays_text

    text = essays_text(max_chars=500)  # some 110 tokens: longer than the 40-slot ring
    doc = tmp_path / "doc.txt"
    doc.write_text(text)
    result = CliRunner().invoke(
        cli, ["score", str(doc), "--model", tiny_dir, "--dtype", "fp32", *SMALL_ARGS]
    )
    assert result.exit_code == 0, result.output
    score = json.loads(result.stdout.splitlines()[0])
    client, _, _ = serve()
    r = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=2)
    lp = r.choices[0].logprobs
    assert r.choices[0].text == text and "".join(lp.tokens) == text
    assert len(lp.token_logprobs) == score["tokens"] > 40
    total = -sum(lp.token_logprobs)
    assert total / score["tokens"] == pytest.approx(score["nll"], rel=1e-4)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert len(top) == 2 and max(top.values()) >= logprob - 1e-4
        if token in top:
            assert top[token] == pytest.approx(logprob, abs=1e-3)
    assert lp.text_offset[0] == 0 and lp.text_offset[1] == len(lp.tokens[0])
    # generation after the prompt: greedy, so each token is its distribution's most likely
    g = client.completions.create(model="tiny", prompt="Once upon", max_tokens=6, logprobs=1)
    glp = g.choices[0].logprobs
    assert len(glp.tokens) == 6 == g.usage.completion_tokens
    for token, logprob, top in zip(glp.tokens, glp.token_logprobs, glp.top_logprobs, strict=True):
        assert top == {token: pytest.approx(logprob, abs=1e-5)}
    ids = client.completions.create(model="tiny", prompt=[[1, 2, 3], [4, 5]], max_tokens=2)
    assert [c.index for c in ids.choices] == [0, 1] and ids.usage.prompt_tokens == 5


def test_an_evicted_conversation_comes_back_from_disk_with_the_same_next_reply(
    serve, tiny_dir, tmp_path
):
    want = sepcli_chat(tiny_dir, TURNS)
    sessions = tmp_path / "sessions"
    client, url, _ = serve(sessions=1, session_dir=sessions, save_idle=0)
    messages = []
    for user, w in zip(TURNS[:2], want, strict=False):
        messages.append({"role": "user", "content": user})
        r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
        assert r.choices[0].message.content == w["reply"]
        messages.append({"role": "assistant", "content": w["reply"]})
    talk(client, ["Another conversation"])  # takes the only ring: the first goes to disk
    stats = health(url)["conversations"]
    assert stats["evicted"] == 1 and stats["in_memory"] == 1
    assert len(list(sessions.glob("*.ckpt"))) == 1
    messages.append({"role": "user", "content": TURNS[2]})
    r = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12)
    assert r.choices[0].message.content == want[2]["reply"]
    assert health(url)["conversations"]["from_disk"] == 1
    assert r.usage.prompt_tokens_details.cached_tokens > 0


def test_four_clients_at_once_all_finish_with_their_own_replies(serve):
    client, url, _ = serve(sessions=4)
    convs = [[f"Client {i} says hello", f"Client {i} asks why", "ok"] for i in range(4)]
    alone = [[r.choices[0].message.content for r in talk(client, turns, 10)] for turns in convs]
    results, errors = [None] * 4, []

    def run(i):
        try:
            results[i] = [r.choices[0].message.content for r in talk(client, convs[i], 10)]
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == alone
    assert health(url)["counters"]["failed"] == 0


def test_one_conversations_requests_run_in_order(serve):
    client, url, _ = serve()
    first = talk(client, ["Hello"], 4)[0].choices[0].message.content
    msgs = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "Go on"},
    ]
    times = {}

    def run(name):
        stream = client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=60, stream=True, extra_body={"ignore_eos": True}
        )
        stamps = [time.monotonic() for _ in stream]
        times[name] = (stamps[0], stamps[-1])

    a = threading.Thread(target=run, args=("a",))
    a.start()
    while health(url)["scheduler"]["running"] == 0:
        time.sleep(0.005)
    b = threading.Thread(target=run, args=("b",))
    b.start()
    a.join(60)
    b.join(60)
    # both continue the same conversation: the second waits until the first is done
    assert times["b"][0] > times["a"][1]


def test_a_client_that_disconnects_mid_stream_cancels_its_generation(serve):
    client, url, _ = serve()
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Write forever"}],
        max_tokens=4000,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.monotonic() + 20
    while health(url)["counters"]["cancelled"] == 0:
        assert time.monotonic() < deadline, "the generation was not cancelled"
        time.sleep(0.05)
    counters = health(url)["counters"]
    assert counters["tokens_generated"] < 4000 and health(url)["scheduler"]["running"] == 0
    assert talk(client, ["Still there?"], 3)[0].choices[0].message.content is not None


# ---------------------------------------------------------------------- bad input and safety


def raw(url: str, path: str, body: bytes, headers=None, method="POST") -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, method=method, headers=headers or {})
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def is_error(body: dict) -> bool:
    err = body.get("error", {})
    return set(err) == {"message", "type", "param", "code"} and bool(err["message"])


def test_every_bad_input_gets_the_openai_error_object_and_the_server_keeps_serving(serve):
    client, url, _ = serve(max_body=4096, max_tokens_limit=64, defaults=GenerateConfig(16))
    ok = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [
        (b'{"model": "tiny", "messages": [', 400),  # malformed JSON
        (b"[1, 2, 3]", 400),  # not an object
        (json.dumps({"model": "tiny"}).encode(), 422),  # no messages
        (json.dumps({**ok, "messages": "hi"}).encode(), 422),
        (json.dumps({**ok, "messages": [{"role": "wizard", "content": "x"}]}).encode(), 422),
        (json.dumps({**ok, "messages": [{"role": "user", "content": 5}]}).encode(), 422),
        (json.dumps({**ok, "temperature": "hot"}).encode(), 422),
        (json.dumps({**ok, "temperature": 3}).encode(), 422),
        (json.dumps({**ok, "max_tokens": True}).encode(), 422),
        (json.dumps({**ok, "stream": "yes"}).encode(), 422),
        (json.dumps({**ok, "max_tokens": 65}).encode(), 400),  # over --max-tokens-limit
        (json.dumps({**ok, "n": 2}).encode(), 400),
        (json.dumps({**ok, "messages": [{"role": "assistant", "content": "x"}]}).encode(), 400),
        (json.dumps({**ok, "padding": "x" * 5000}).encode(), 413),  # over --max-body
    ]
    for body, status in cases:
        got, reply = raw(url, "/v1/chat/completions", body)
        assert (got, is_error(reply)) == (status, True), (body[:60], got, reply)
    bad_prompts = [{"model": "tiny"}, {"model": "tiny", "prompt": 7}, {"prompt": [[1], "a"]}]
    for body in bad_prompts:
        assert raw(url, "/v1/completions", json.dumps(body).encode())[0] == 422
    assert raw(url, "/v1/completions", b'{"prompt": "a", "logprobs": 9}')[0] == 422
    status, reply = raw(url, "/v1/nothing-here", b"{}")
    assert status == 404 and is_error(reply)
    status, reply = raw(url, "/v1/chat/completions", b"", method="GET")
    assert status == 405 and is_error(reply)
    # through the official client: its exceptions carry the status and our message
    with pytest.raises(openai.BadRequestError, match="more than this server allows"):
        client.chat.completions.create(model="tiny", messages=ok["messages"], max_tokens=100)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tiny", messages=[{"role": "user"}])
    assert talk(client, ["still serving?"], 2)[0].usage.completion_tokens == 2
    assert health(url)["counters"]["failed"] == 0  # refused at the door, not half-run


def test_an_api_key_is_required_when_set(serve):
    client, url, _ = serve(api_key="s3cret")
    assert talk(client, ["hi"], 2)[0].usage.completion_tokens == 2
    wrong = openai.OpenAI(base_url=url + "/v1", api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    status, reply = raw(url, "/v1/chat/completions", b"{}")  # no header at all
    assert status == 401 and is_error(reply) and reply["error"]["code"] == "invalid_api_key"
    assert [m.id for m in client.models.list().data] == ["tiny-serve-model0"]
    assert health(url)["status"] == "ok"  # health needs no key


def test_method_full_refuses_a_turn_past_the_context_with_a_400(serve):
    client, url, _ = serve(stream=StreamConfig(method="full"))
    long = "word " * 600  # past the tiny model's 512-token context
    with pytest.raises(openai.BadRequestError, match="context of 512"):
        talk(client, [long])
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="tiny", prompt=long, max_tokens=1)
    assert talk(client, ["short"], 3)[0].usage.completion_tokens == 3


def test_no_request_reads_or_writes_outside_the_session_dir(serve, tmp_path):
    sessions = tmp_path / "sessions"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.ckpt").write_text("not yours")
    client, url, server = serve(sessions=1, session_dir=sessions, save_idle=0)
    sneaky = ["../outside/secret", "/etc/passwd", str(outside / "secret.ckpt"), "..\\..\\x"]
    for i, text in enumerate(sneaky):
        talk(client, [text, f"{text} again {i}"], 2, system=text, user=text)
        client.completions.create(model=text, prompt=text, max_tokens=1, user=text)
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    in_dir = [p for p in files if p.parts[0] == "sessions"]
    assert sorted(set(files) - set(in_dir)) == [outside.relative_to(tmp_path) / "secret.ckpt"]
    assert (outside / "secret.ckpt").read_text() == "not yours"
    assert in_dir and all(len(p.stem) == 64 and p.suffix == ".ckpt" for p in in_dir)
    with pytest.raises(ValueError):
        server.store.path("../outside/secret")


def test_the_command_refuses_a_port_in_use_and_bad_options_in_one_line(tiny_dir):
    taken = serve_app.listen("127.0.0.1", 0)
    port = str(taken.getsockname()[1])
    base = ["serve", "--model", tiny_dir, "--dtype", "fp32"]
    with taken:
        result = CliRunner().invoke(cli, [*base, "--port", port])
    assert result.exit_code == 2 and "cannot listen on 127.0.0.1:" in result.stderr
    for bad, why in (
        (["--sessions", "0"], "--sessions must be an integer >= 1"),
        (["--max-new-tokens", "9000"], "over --max-tokens-limit 4096"),
        (["--api-key", " "], "--api-key must not be empty"),
    ):
        result = CliRunner().invoke(cli, [*base, "--port", "0", *bad])
        assert result.exit_code == 2 and why in result.stderr, result.output
        assert len(result.stderr.strip().splitlines()) == 1
