"""What a request does on the model: a chat turn on a held conversation, or a completion.

Each job is a generator that the scheduler advances one step at a time, on the model thread:
it yields :class:`~sepcli.serve.wire.Text`, :class:`~sepcli.serve.wire.End` and
:class:`~sepcli.serve.wire.Usage` events, or None after a step that has nothing to report (a
prefill chunk, an exchange of history read). Closing it (the client went away) stops it at the
step it is at; what it generated so far stays in the conversation, as an interrupted ``chat``
reply does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sepcli.errors import ContextLimitError
from sepcli.generate.decode import Decoder, prompt_ids
from sepcli.generate.sampling import Sampler
from sepcli.serve import wire
from sepcli.serve.sessions import ConversationStore, extend_key
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.reader import start_token

ECHO_STEP = 32  # prompt tokens scored one at a time per scheduler step (echo with logprobs)


@dataclass
class Counters:
    """What the server has done since it started (``GET /health``): ``prompt_tokens_fed`` are
    the prompt tokens that went through a ring, so a resent history adds only its new turn."""

    requests: int = 0
    prompt_tokens_fed: int = 0
    tokens_generated: int = 0
    cancelled: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return dict(vars(self))


def context_error(exc: ContextLimitError) -> wire.ApiError:
    """A turn past the context under method 'full', as the API says it."""
    why = str(exc).split(";")[0]
    return wire.ApiError(
        400,
        f"{why}; start a new conversation, or serve with --method sepllm",
        "messages",
        "context_length_exceeded",
    )


# ---------------------------------------------------------------------- chat


def chat_turn(
    store: ConversationStore, request: wire.ChatRequest, key: str, counters: Counters
) -> Iterator:
    """Take the conversation for ``key`` now (so the scheduler's next check sees it busy);
    -> the turn's generator."""
    conv, source = store.take(key, request.system)
    return _chat_turn(store, conv, source, request, key, counters)


def _chat_turn(store, conv, source: str, request: wire.ChatRequest, key: str, counters):
    session, held = conv.session, None  # held: the key of what the ring holds when we stop
    try:
        if source == "new":  # read the history afresh: each exchange once, then the turn
            for user, reply in request.exchanges:
                session.replay(user, reply)
                yield None
        held, cached = key, session.engine.seen if source != "new" else 0
        session.config = request.generate
        session.decoder.sampler = Sampler(request.generate.sampling, session.engine.device)
        turns, prompt_end, full = len(session.turns), None, False
        reply = session.send(request.user)
        try:
            for tok in reply:
                if prompt_end is None:
                    prompt_end = session.engine.seen
                if tok.text:
                    yield wire.Text(0, tok.text)
        except ContextLimitError:
            if prompt_end is None:
                raise  # the turn itself does not fit: nothing was fed
            full = True  # method 'full' reached the context mid-reply: a length stop
        finally:
            reply.close()  # records the turn, also when this generator is closed mid-reply
            if len(session.turns) > turns:
                last = session.turns[-1]
                held = extend_key(extend_key(key, "user", request.user), "assistant", last.reply)
                del session.turns[:-1]  # the ring holds the conversation; keep memory flat
                counters.tokens_generated += last.new_tokens
        if prompt_end is None:
            prompt_end = session.engine.seen
        counters.prompt_tokens_fed += prompt_end - cached
        yield wire.End(0, "length" if full else wire.FINISH[last.stop_reason])
        yield wire.Usage(prompt_end, last.new_tokens, cached)
    except ContextLimitError as exc:
        raise context_error(exc) from None
    finally:
        store.release(conv, held)


# ---------------------------------------------------------------------- completions


def _top(logits: torch.Tensor, k: int, text) -> dict:
    values, ids = torch.log_softmax(logits, -1).topk(k)
    return {text(int(i)): float(v) for v, i in zip(values, ids, strict=True)}


@dataclass(frozen=True)
class Model:
    """What a completion needs to build its rings: the loaded model, the cache config, the
    separator lookup, the ids that end a reply, and the ring's slots (``capacity``)."""

    lm: object
    stream: StreamConfig
    separators: torch.Tensor
    eos: frozenset
    capacity: int


def completion(
    model: Model, store: ConversationStore, request: wire.CompletionRequest, counters: Counters
) -> Iterator:
    """Lend a ring now; -> the completion's generator (each prompt through a fresh ring)."""
    store.lend()
    return _completion(model, store, request, counters)


def _completion(model: Model, store, request: wire.CompletionRequest, counters: Counters):
    lm = model.lm
    tokenizer, cfg = lm.tokenizer, request.generate
    k = request.logprobs
    scored = request.echo and k is not None  # the prompt's own log-probabilities

    def text(i: int) -> str:
        return tokenizer.decode([i], skip_special_tokens=False)

    prompt_total = completion_total = 0
    try:
        for index, prompt in enumerate(request.prompts):
            ids = prompt_ids(tokenizer, prompt)
            if not ids:
                raise wire.ApiError(400, "the prompt is empty", "prompt")
            head = len(start_token(tokenizer)) if isinstance(prompt, str) else 0
            engine = StreamEngine(lm.model, model.stream, model.separators, score=scored)
            decoder = Decoder(engine, tokenizer, cfg.sampling, set(model.eos))
            if scored:
                entries = []
                for i, t in enumerate(ids):
                    top = None
                    if k and engine.last_logits is not None:
                        top = _top(engine.last_logits, k, text)
                    stats = engine.feed([t])
                    if i >= head:
                        lp = -float(stats.nll[0]) if stats.scored else None
                        entries.append((text(t), lp, top))
                    if i % ECHO_STEP == ECHO_STEP - 1:
                        yield None
                echo = prompt if isinstance(prompt, str) else tokenizer.decode(list(ids))
                yield wire.Text(index, echo, tuple(entries))
            else:
                for _ in decoder.prefill([ids]):
                    yield None
                if request.echo:
                    echo = prompt if isinstance(prompt, str) else tokenizer.decode(list(ids))
                    tokens = tuple((text(t), None, None) for t in ids[head:])
                    yield wire.Text(index, echo, tokens if k is not None else ())
            prompt_total += len(ids)
            counters.prompt_tokens_fed += len(ids)
            finish = "length"
            if cfg.max_new_tokens > 0:
                try:
                    for tok in decoder.decode(cfg.max_new_tokens, cfg.stop, cfg.ignore_eos):
                        entry = ()
                        if k is not None:  # the distribution it was drawn from
                            logits = engine.last_logits
                            lp = float(torch.log_softmax(logits, -1)[tok.id])
                            entry = ((text(tok.id), lp, _top(logits, k, text) if k else None),)
                        yield wire.Text(index, tok.text, entry)
                    finish = wire.FINISH[decoder.stop_reason]
                except ContextLimitError:  # method 'full' reached the context: a length stop
                    finish = "length"
            completion_total += decoder.new_tokens
            counters.tokens_generated += decoder.new_tokens
            yield wire.End(index, finish)
        yield wire.Usage(prompt_total, completion_total)
    except ContextLimitError as exc:
        raise context_error(exc) from None
    finally:
        store.give_back()
