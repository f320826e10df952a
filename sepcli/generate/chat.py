"""A conversation on the ring: each turn's text is fed once, after everything before it.

Turn 500 costs what turn 5 costs: the ring holds the conversation as the method keeps it, and
nothing is ever re-encoded. A turn's text is what the chat template adds for it: the end of the
previous reply (``<|im_end|>\\n`` ...), the user's message and the generation prompt. It is
found by rendering a two-turn conversation with placeholder contents and keeping what the
template adds after the first reply, so it does not depend on the replies' text (templates
that strip or rewrite earlier replies are fine). A tokenizer without a chat template gets a
plain ``User: ... / Assistant: ...`` format that stops at the next ``\\nUser:``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sepcli.errors import ContextLimitError
from sepcli.generate.decode import Decoder, GenerateConfig, Token
from sepcli.generate.sampling import stop_ids
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.reader import start_token

_USER, _REPLY = "\x00user\x00", "\x00reply\x00"  # placeholders no real message contains


class ChatFormat:
    """Turn text for a tokenizer: its chat template, or the plain fallback.

    ``template`` is False for the plain format; ``stop`` are the stop strings it needs.
    """

    def __init__(self, tokenizer, system: str | None = None):
        self.tokenizer = tokenizer
        self.system = system
        self.template = bool(getattr(tokenizer, "chat_template", None))
        self.stop: tuple[str, ...] = () if self.template else ("\nUser:",)

    def _render(self, messages: list[dict], prompt: bool) -> str:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return self.tokenizer.apply_chat_template(
            head + messages, tokenize=False, add_generation_prompt=prompt
        )

    def opening(self, user: str) -> str:
        """The first turn: system prompt (if any), the user's message, the generation prompt."""
        if self.template:
            return self._render([{"role": "user", "content": user}], prompt=True)
        system = f"System: {self.system}\n\n" if self.system else ""
        return f"{system}User: {user}\nAssistant:"

    def next_turn(self, user: str) -> str:
        """A later turn: the close of the previous reply, the message, the generation prompt."""
        if not self.template:
            return f"\nUser: {user}\nAssistant:"
        first = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _REPLY}]
        before = self._render(first, prompt=False)
        after = self._render([*first, {"role": "user", "content": user}], prompt=True)
        if not after.startswith(before) or _REPLY not in before:
            # a template that renders earlier turns differently once more follow: feed its
            # text for the new turn alone (the ring still keeps everything before it)
            return self._render([{"role": "user", "content": user}], prompt=True)
        close = before[before.rindex(_REPLY) + len(_REPLY) :]
        return close + after[len(before) :]


@dataclass
class Turn:
    """One exchange, as the session records it."""

    user: str
    reply: str
    new_tokens: int
    prompt_tokens: int
    stop_reason: str
    decode_tok_per_s: float


class ChatSession:
    """A multi-turn conversation on one ring.

    >>> chat = ChatSession(model, tokenizer, StreamConfig(), GenerateConfig(128))
    >>> for tok in chat.send("What is a separator token?"):
    ...     print(tok.text, end="", flush=True)
    """

    def __init__(
        self,
        model,
        tokenizer,
        stream: StreamConfig | None = None,
        config: GenerateConfig | None = None,
        system: str | None = None,
        separators=None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.stream = stream or StreamConfig()
        self.config = config or GenerateConfig()
        self.format = ChatFormat(tokenizer, system)
        # the [vocab] separator lookup, when the caller has it (a server makes many sessions)
        self._separators = separator_mask(tokenizer) if separators is None else separators
        self.reset()

    def reset(self) -> None:
        """Forget the conversation: an empty ring, turn 1 next."""
        engine = StreamEngine(self.model, self.stream, self._separators, score=False)
        self.decoder = Decoder(
            engine, self.tokenizer, self.config.sampling, stop_ids(self.model, self.tokenizer)
        )
        self.turns: list[Turn] = []

    @property
    def engine(self) -> StreamEngine:
        return self.decoder.engine

    def turn_ids(self, user: str) -> list[int]:
        """The ids this user message adds to the ring (after the previous reply's last token)."""
        if self.turns:
            text = self.format.next_turn(user)
            tail = self.decoder.tail  # an EOS marker or stop string already fed with the reply
            if tail and text.startswith(tail):
                text = text[len(tail) :]
            head = []
        else:
            text = self.format.opening(user)
            head = [] if self.format.template else start_token(self.tokenizer)
        return head + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def send(self, user: str) -> Iterator[Token]:
        """Feed the user's turn, then yield the reply's tokens. Stopping the iteration early
        (Ctrl-C) keeps what was generated: the turn is recorded as interrupted."""
        ids = self.turn_ids(user)
        self._check_room(len(ids))
        for _ in self.decoder.prefill([ids]):
            pass
        prompt_tokens = self.decoder.prefill_tokens
        cfg, pieces = self.config, []
        try:
            for tok in self.decoder.decode(
                cfg.max_new_tokens, self.format.stop + cfg.stop, cfg.ignore_eos
            ):
                pieces.append(tok.text)
                yield tok
        finally:
            d = self.decoder
            self.turns.append(
                Turn(
                    user=user,
                    reply="".join(pieces),
                    new_tokens=d.new_tokens,
                    prompt_tokens=prompt_tokens,
                    stop_reason=d.stop_reason or "interrupt",
                    decode_tok_per_s=round(d.decode_tok_per_s, 2),
                )
            )

    def replay(self, user: str, reply: str) -> None:
        """Feed an earlier exchange (the user's message, then the reply as text) without
        generating, so that a conversation read afresh from its history (an API client sends
        the whole of it) goes on as if it had been held here."""
        ids = self.turn_ids(user) + self.tokenizer(reply, add_special_tokens=False)["input_ids"]
        self._check_room(len(ids))
        for _ in self.decoder.prefill([ids]):
            pass
        self.decoder.tail = ""  # the reply's close was not fed: the next turn's text brings it
        self.turns.append(Turn(user, reply, 0, self.decoder.prefill_tokens, "history", 0.0))

    def _check_room(self, n: int) -> None:
        """ContextLimitError when ``n`` more tokens (and the reply's first) would pass the
        model's context under method 'full' (the other methods evict)."""
        engine = self.engine
        if self.stream.method == "full" and engine.ring.used + n + 1 > engine.capacity:
            raise ContextLimitError(
                f"method 'full' keeps every token and this turn would pass the model's context "
                f"of {engine.capacity} tokens ({engine.ring.used} used); /reset, or use "
                "--method sepllm"
            )

    def stats(self) -> dict:
        """Counters for /stats and the summary."""
        last = self.turns[-1] if self.turns else None
        return {
            "turns": len(self.turns),
            "total_tokens": self.engine.seen + (self.decoder.pending is not None),
            "cache_used": self.engine.ring.used,
            "cache_capacity": self.engine.capacity,
            "new_tokens": sum(t.new_tokens for t in self.turns),
            "decode_tok_per_s": last.decode_tok_per_s if last else None,
        }

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {
            "decoder": self.decoder.state_dict(),
            "tail": self.decoder.tail,
            "turns": [vars(t) for t in self.turns],
            "system": self.format.system,
        }

    def load_state_dict(self, engine_state: dict, state: dict) -> None:
        self.engine.load_state_dict(engine_state)
        self.decoder.load_state_dict(state["decoder"])
        self.decoder.tail = state["tail"]
        self.turns = [Turn(**t) for t in state["turns"]]
        self.format.system = state["system"]
