"""OpenAI's wire format: request bodies in (checked), completions, chunks, usage and errors out.

Statuses as OpenAI-compatible servers use them: 400 for a body that is not JSON (or not an
object) and for what the server refuses to do (more tokens than it allows, a turn past the
context, ``n`` > 1), 401 for a missing or wrong API key, 404 for an unknown route, 413 for a
body over ``--max-body``, 422 for a field that is missing or of the wrong type or range. Every
error is ``{"error": {"message", "type", "param", "code"}}``. Fields this server does not
implement (``presence_penalty``, ``user``, ...) are accepted and ignored, as most local servers
do; ``top_k`` and ``ignore_eos`` are accepted as extensions (as vLLM and llama-server do).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass

from sepcli.errors import ConfigError
from sepcli.generate.decode import GenerateConfig
from sepcli.generate.sampling import SamplingConfig

ROLES = ("system", "developer", "user", "assistant")
MAX_STOP = 4  # OpenAI's limit on stop strings


class ApiError(Exception):
    """An error a client caused: the HTTP status and OpenAI's error object."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        if self.status == 401:
            return "authentication_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


def invalid(param: str, message: str) -> ApiError:
    """422: a field of the wrong type or out of range."""
    return ApiError(422, message, param, "invalid_value")


# ---------------------------------------------------------------------- request bodies


def parse_body(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        msg = getattr(exc, "msg", str(exc))
        raise ApiError(
            400, f"the request body is not valid JSON ({msg})", code="invalid_json"
        ) from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _typed(body: dict, name: str, types: tuple, what: str, default=None):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        raise invalid(name, f"'{name}' must be {what}, got {json.dumps(value)}")
    if not isinstance(value, types):
        raise invalid(name, f"'{name}' must be {what}, got {json.dumps(value)[:80]}")
    return value


def _number(body: dict, name: str, low: float, high: float, default, open_low=False):
    value = _typed(body, name, (int, float), "a number", default)
    if value is None:
        return None
    ok = math.isfinite(value) and (low < value if open_low else low <= value) and value <= high
    if not ok:
        side = "(" if open_low else "["
        raise invalid(name, f"'{name}' must be in {side}{low}, {high}], got {value}")
    return value


@dataclass(frozen=True)
class Limits:
    """What the server allows and assumes (from :class:`~sepcli.serve.config.ServeConfig`)."""

    max_tokens: int
    defaults: GenerateConfig


def _max_tokens(body: dict, limits: Limits, low: int) -> int:
    names = [n for n in ("max_completion_tokens", "max_tokens") if body.get(n) is not None]
    name = names[0] if names else "max_tokens"
    value = _typed(body, name, (int,), "an integer", limits.defaults.max_new_tokens)
    if value < low:
        raise invalid(name, f"'{name}' must be at least {low}, got {value}")
    if value > limits.max_tokens:
        raise ApiError(
            400,
            f"'{name}' is {value}, more than this server allows ({limits.max_tokens}; "
            "sepcli serve --max-tokens-limit)",
            name,
            "max_tokens_too_large",
        )
    return value


def _generate(body: dict, limits: Limits, low_tokens: int) -> GenerateConfig:
    """max_tokens, sampling and stop of a request, with the server's defaults."""
    base = limits.defaults.sampling
    temperature = _number(body, "temperature", 0, 2, base.temperature)
    top_p = _number(body, "top_p", 0, 1, base.top_p, open_low=True)
    top_k = _typed(body, "top_k", (int,), "an integer", base.top_k)
    if top_k < 0:
        raise invalid("top_k", f"'top_k' must be >= 0, got {top_k}")
    seed = _typed(body, "seed", (int,), "an integer", None)
    if seed is None:  # OpenAI: without a seed, sampling differs from request to request
        seed = base.seed if temperature == 0 else secrets.randbits(48)
    n = _typed(body, "n", (int,), "an integer", 1)
    if n != 1:
        raise ApiError(400, f"'n' must be 1 here (one choice per request), got {n}", "n")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is None:
        stop = []
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise invalid("stop", "'stop' must be a non-empty string or a list of them")
    if len(stop) > MAX_STOP:
        raise invalid("stop", f"'stop' takes at most {MAX_STOP} strings, got {len(stop)}")
    ignore_eos = _typed(body, "ignore_eos", (bool,), "a boolean", False)
    try:
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return GenerateConfig(
            max_new_tokens=_max_tokens(body, limits, low_tokens),
            stop=tuple(stop),
            ignore_eos=ignore_eos,
            sampling=sampling,
        )
    except ConfigError as exc:  # a bound this module does not check itself
        raise invalid("", str(exc)) from None


def _stream(body: dict) -> tuple[bool, bool]:
    """(stream, include usage in the stream): usage always ends a stream here."""
    stream = _typed(body, "stream", (bool,), "a boolean", False)
    options = _typed(body, "stream_options", (dict,), "an object", {})
    _typed(options, "include_usage", (bool,), "a boolean", True)
    return stream, True


def _content(message: dict, i: int) -> str:
    content = message.get("content")
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid(param, f"'{param}' may only hold text parts here")
            if not isinstance(part.get("text"), str):
                raise invalid(param, f"'{param}': a text part needs a 'text' string")
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(param, f"'{param}' must be a string or a list of text parts")


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat request: the system prompt, the earlier (user, reply) exchanges and the
    new user message, as the history's messages in order."""

    system: str | None
    exchanges: tuple[tuple[str, str], ...]
    user: str
    generate: GenerateConfig
    stream: bool
    usage_in_stream: bool

    def history(self) -> list[tuple[str, str]]:
        """(role, text) of every message before the new user message."""
        out = [] if self.system is None else [("system", self.system)]
        for user, reply in self.exchanges:
            out += [("user", user), ("assistant", reply)]
        return out


def parse_chat(body: dict, limits: Limits) -> ChatRequest:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(422, "'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages", "'messages' must be a non-empty list of messages")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"messages[{i}]", f"'messages[{i}]' must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise invalid(
                f"messages[{i}].role",
                f"'messages[{i}].role' must be one of {', '.join(ROLES)}, got {json.dumps(role)}",
            )
        parsed.append(("system" if role == "developer" else role, _content(message, i)))
    system_parts = []
    while parsed and parsed[0][0] == "system":
        system_parts.append(parsed.pop(0)[1])
    roles = [role for role, _ in parsed]
    want = ["user", "assistant"] * (len(parsed) // 2) + ["user"]
    if roles != want[: len(roles)] or len(roles) % 2 == 0:
        raise ApiError(
            400,
            "the messages must be system messages (optional), then user and assistant messages "
            "taking turns, ending with a user message",
            "messages",
            "invalid_conversation",
        )
    exchanges = tuple((parsed[i][1], parsed[i + 1][1]) for i in range(0, len(parsed) - 1, 2))
    stream, usage = _stream(body)
    return ChatRequest(
        system="\n\n".join(system_parts) if system_parts else None,
        exchanges=exchanges,
        user=parsed[-1][1],
        generate=_generate(body, limits, 1),
        stream=stream,
        usage_in_stream=usage,
    )


@dataclass(frozen=True)
class CompletionRequest:
    """A checked completion request: prompts (text, or token ids used as given), and what to
    return besides the generated text."""

    prompts: tuple[str | tuple[int, ...], ...]
    echo: bool
    logprobs: int | None  # None: no log-probabilities; k: the k most likely beside each token
    generate: GenerateConfig
    stream: bool
    usage_in_stream: bool


def parse_completion(body: dict, limits: Limits, vocab_size: int) -> CompletionRequest:
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(422, "'prompt' is required", "prompt", "missing_required_parameter")
    bad = invalid("prompt", "'prompt' must be a string, a list of strings, or token ids")
    if isinstance(prompt, str):
        prompts = (prompt,)
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = tuple(prompt)
    elif isinstance(prompt, list) and prompt and all(_is_id(p) for p in prompt):
        prompts = (tuple(prompt),)
    elif isinstance(prompt, list) and prompt and all(_ids(p) for p in prompt):
        prompts = tuple(tuple(p) for p in prompt)
    else:
        raise bad
    for p in prompts:
        if not isinstance(p, str) and any(t >= vocab_size for t in p):
            raise invalid("prompt", f"token ids must be below the vocabulary size {vocab_size}")
    logprobs = _typed(body, "logprobs", (int,), "an integer from 0 to 5", None)
    if logprobs is not None and not 0 <= logprobs <= 5:
        raise invalid("logprobs", f"'logprobs' must be from 0 to 5, got {logprobs}")
    echo = _typed(body, "echo", (bool,), "a boolean", False)
    stream, usage = _stream(body)
    if stream and len(prompts) > 1:
        raise ApiError(400, "'stream' takes one prompt at a time here", "stream")
    return CompletionRequest(
        prompts=prompts,
        echo=echo,
        logprobs=logprobs,
        generate=_generate(body, limits, 0),
        stream=stream,
        usage_in_stream=usage,
    )


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_id(t) for t in value)


# ---------------------------------------------------------------------- responses

FINISH = {"eos": "stop", "stop": "stop", "max": "length", "interrupt": "stop"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    """OpenAI's usage, with the prompt tokens that were already in the ring (not fed again)
    as ``prompt_tokens_details.cached_tokens``."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


class Reply:
    """The envelope of one response: its id, creation time and model name."""

    def __init__(self, model: str, kind: str):
        self.model = model
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())
        self.kind = kind

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def chat(self, text: str, finish: str, use: dict) -> dict:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": finish,
            "logprobs": None,
        }
        return {**self._head("chat.completion"), "choices": [choice], "usage": use}

    def chat_chunk(self, delta: dict, finish: str | None = None) -> dict:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {**self._head("chat.completion.chunk"), "choices": [choice]}

    def completion(self, choices: list[dict], use: dict) -> dict:
        return {**self._head("text_completion"), "choices": choices, "usage": use}

    def completion_chunk(self, choice: dict) -> dict:
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, use: dict) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        return {**self._head(obj), "choices": [], "usage": use}


def completion_choice(index: int, text: str, finish: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def sse(obj: dict | str) -> str:
    """One server-sent event."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n"


def models_list(name: str, created: int) -> dict:
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "sepcli"}],
    }


# ---------------------------------------------------------------------- what a job reports


@dataclass(frozen=True)
class Text:
    """A piece of choice ``index``'s text; ``tokens``: (token text, log-probability or None,
    {token text: log-probability} of the most likely or None) for each token it covers."""

    index: int
    text: str
    tokens: tuple = ()


@dataclass(frozen=True)
class End:
    """Choice ``index`` is complete."""

    index: int
    finish: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    def body(self) -> dict:
        return usage(self.prompt_tokens, self.completion_tokens, self.cached_tokens)


class ChatOutput:
    """A chat job's events -> stream chunks as they come, or the whole reply at the end."""

    def __init__(self, reply: Reply):
        self.reply, self.parts = reply, []
        self.finish, self.usage = None, None

    def opening(self) -> list[dict]:
        return [self.reply.chat_chunk({"role": "assistant", "content": ""})]

    def chunks(self, event) -> list[dict]:
        if isinstance(event, Text):
            self.parts.append(event.text)
            return [self.reply.chat_chunk({"content": event.text})] if event.text else []
        if isinstance(event, End):
            self.finish = event.finish
            return [self.reply.chat_chunk({}, event.finish)]
        self.usage = event.body()
        return [self.reply.usage_chunk(self.usage)]

    def body(self) -> dict:
        return self.reply.chat("".join(self.parts), self.finish, self.usage)


class CompletionOutput:
    """A completion job's events -> stream chunks, or the choices with their logprobs."""

    def __init__(self, reply: Reply, prompts: int, logprobs: bool):
        self.reply, self.logprobs = reply, logprobs
        self.texts = [[] for _ in range(prompts)]
        self.tokens = [[] for _ in range(prompts)]
        self.finish: list[str | None] = [None] * prompts
        self.usage = None

    def opening(self) -> list[dict]:
        return []

    def _logprobs(self, tokens, start: int = 0) -> dict | None:
        if not self.logprobs:
            return None
        offsets, at = [], start
        for text, _, _ in tokens:
            offsets.append(at)
            at += len(text)
        return {
            "tokens": [t for t, _, _ in tokens],
            "token_logprobs": [lp for _, lp, _ in tokens],
            "top_logprobs": [top for _, _, top in tokens],
            "text_offset": offsets,
        }

    def chunks(self, event) -> list[dict]:
        if isinstance(event, Text):
            start = sum(len(t) for t, _, _ in self.tokens[event.index])
            self.texts[event.index].append(event.text)
            self.tokens[event.index].extend(event.tokens)
            lp = self._logprobs(event.tokens, start)
            choice = completion_choice(event.index, event.text, None, lp)
            return [self.reply.completion_chunk(choice)]
        if isinstance(event, End):
            self.finish[event.index] = event.finish
            choice = completion_choice(event.index, "", event.finish, None)
            return [self.reply.completion_chunk(choice)]
        self.usage = event.body()
        return [self.reply.usage_chunk(self.usage)]

    def body(self) -> dict:
        choices = [
            completion_choice(i, "".join(texts), self.finish[i], self._logprobs(self.tokens[i]))
            for i, texts in enumerate(self.texts)
        ]
        return self.reply.completion(choices, self.usage)
