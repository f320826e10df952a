"""Writing on the ring: prefill a prompt in chunks, then decode one token at a time.

The shape of gpt-fast's ``generate.py``: :func:`prefill` -> :func:`decode_one_token` ->
:class:`Decoder.decode` (n tokens) -> :func:`generate`. The KV cache is the streaming engine's
fixed ring (:class:`~sepcli.stream.engine.StreamEngine`): a prompt of any length and a
generation of any length run in constant memory, each method evicting as it does for ``stream``.

A sampled token is *pending* until the next one is needed: it is fed to the engine only then,
so a run that stops after n tokens costs n - 1 decode forwards, and a chat's next turn feeds
the last reply token together with its own text (the ring always holds the whole conversation).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sepcli.errors import ConfigError
from sepcli.generate.detok import Detokenizer, StopStrings
from sepcli.generate.sampling import Sampler, SamplingConfig, stop_ids
from sepcli.stream.config import StreamConfig
from sepcli.stream.reader import start_token

if TYPE_CHECKING:  # GenerateConfig is read to parse options: torch loads with the engine
    import torch

    from sepcli.stream.engine import StreamEngine

STOP_REASONS = ("eos", "max", "stop", "interrupt")


@dataclass(frozen=True)
class GenerateConfig:
    """What one generation does besides the cache (that is the :class:`StreamConfig`).

    Attributes
    ----------
    max_new_tokens : most tokens to generate; 0 means no limit (until EOS, a stop string or
        the caller stops iterating).
    stop : strings that end the generation; the text is cut before the first one.
    ignore_eos : keep going past the model's end-of-sequence tokens.
    sampling : greedy by default; see :class:`SamplingConfig`.
    """

    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    sampling: SamplingConfig = field(default_factory=SamplingConfig)

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ConfigError(f"--max-new-tokens must be an integer >= 0 (0: no limit), got {n!r}")
        object.__setattr__(self, "stop", tuple(self.stop))
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ConfigError(f"--stop strings must be non-empty, got {list(self.stop)!r}")

    def to_dict(self) -> dict:
        sampling = self.sampling
        return {
            "max_new_tokens": self.max_new_tokens,
            "stop": list(self.stop),
            "ignore_eos": self.ignore_eos,
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }


@dataclass(frozen=True)
class Token:
    """One generated token: its id and the text it adds (may be "" while a character or a
    possible stop string is incomplete)."""

    id: int
    text: str


def prefill(engine: StreamEngine, blocks: Iterable[Sequence[int]]) -> Iterator:
    """Feed token blocks of any size in ``config.chunk`` chunks; yields the engine's per-chunk
    stats (constant memory however long the prompt)."""
    yield from engine.run(blocks)


def decode_one_token(engine: StreamEngine, token: int) -> torch.Tensor:
    """Feed one token; -> [vocab] fp32 logits for the next."""
    engine.feed([token])
    return engine.last_logits


class Decoder:
    """An engine that writes: prefill, then decode on the same ring, turn after turn.

    Parameters
    ----------
    engine : the streaming engine (its ring is the KV cache).
    tokenizer : for the text of each token.
    sampling : greedy or sampled; one seeded generator for the decoder's whole life.
    eos : ids that end a reply (:func:`sepcli.generate.sampling.stop_ids`).
    """

    def __init__(self, engine: StreamEngine, tokenizer, sampling: SamplingConfig, eos: set[int]):
        self.engine = engine
        self.tokenizer = tokenizer
        self.sampler = Sampler(sampling, engine.device)
        self.eos = set(eos)
        self.pending: int | None = None  # sampled, shown, not yet fed
        self.stop_reason: str | None = None
        self.tail = ""  # text fed (or pending) after the shown text: an EOS marker, a stop string
        self.new_tokens = 0  # of the last decode call
        self.prefill_tokens = 0  # of the last prefill call
        self.prefill_s = 0.0
        self.decode_s = 0.0

    def prefill(self, blocks: Iterable[Sequence[int]]) -> Iterator:
        """Feed the pending token and then ``blocks``; yields per-chunk stats.

        ``prefill_s`` counts the engine's work only: not the time ``blocks`` takes to produce
        the prompt (reading a file or a pipe, tokenising), nor the caller's time between
        chunks."""
        seen, waited = self.engine.seen, [0.0]
        if self.pending is not None:
            blocks = itertools.chain([[self.pending]], blocks)
            self.pending = None
        self.prefill_s = 0.0
        chunks = prefill(self.engine, _timed(blocks, waited))
        try:
            while True:
                start = time.perf_counter()
                stats = next(chunks, None)
                self.prefill_s += time.perf_counter() - start
                if stats is None:
                    return
                yield stats
        finally:
            self.prefill_tokens = self.engine.seen - seen
            self.prefill_s -= waited[0]

    def decode(
        self, max_new_tokens: int = 0, stop: Sequence[str] = (), ignore_eos: bool = False
    ) -> Iterator[Token]:
        """Yield new tokens until EOS, a stop string or ``max_new_tokens`` (0: no limit).

        ``stop_reason`` is set when the iterator ends by itself (``eos``, ``stop``, ``max``);
        a caller that stops iterating sets ``interrupt`` itself. The text of the last token may
        be held back by a possible stop string until then: the final :class:`Token` of a run
        that ends at ``max`` carries it.
        """
        detok, stops = Detokenizer(self.tokenizer), StopStrings(stop)
        self.stop_reason, self.tail, self.new_tokens = None, "", 0
        self.decode_s = 0.0  # the decoder's own time: not the caller's between tokens
        start = time.perf_counter()
        try:
            while True:
                logits = (
                    self.engine.last_logits
                    if self.pending is None
                    else decode_one_token(self.engine, self.pending)
                )
                tok = self.pending = self.sampler(logits)
                if tok in self.eos and not ignore_eos:
                    self.stop_reason = "eos"
                    self.tail = self.tokenizer.decode([tok], skip_special_tokens=False)
                    return
                self.new_tokens += 1
                text, hit = stops.push(detok.push(tok))
                last = max_new_tokens and self.new_tokens >= max_new_tokens
                if hit:
                    self.stop_reason, self.tail = "stop", stops.tail
                elif last:
                    self.stop_reason = "max"
                    text += stops.flush()
                self.decode_s += time.perf_counter() - start
                yield Token(tok, text)
                start = time.perf_counter()
                if self.stop_reason is not None:
                    return
        finally:
            self.decode_s += time.perf_counter() - start

    @property
    def decode_tok_per_s(self) -> float:
        return self.new_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tok_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        return {"pending": self.pending, "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pending = state["pending"]
        self.sampler.load_state_dict(state["sampler"])


def _timed(blocks: Iterable[Sequence[int]], waited: list[float]) -> Iterator[Sequence[int]]:
    """``blocks``, adding the seconds spent waiting for each (and for the end) to waited[0]."""
    it = iter(blocks)
    while True:
        start = time.perf_counter()
        block = next(it, None)
        waited[0] += time.perf_counter() - start
        if block is None:
            return
        yield block


def prompt_ids(tokenizer, prompt: str | Sequence[int]) -> list[int]:
    """A text prompt -> BOS (if the tokenizer has one) + its ids; a list of ids is used as is."""
    if isinstance(prompt, str):
        return start_token(tokenizer) + tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return [int(t) for t in prompt]


def generate(
    model,
    tokenizer,
    prompt: str | Sequence[int],
    stream: StreamConfig | None = None,
    config: GenerateConfig | None = None,
) -> Iterator[Token]:
    """Generate from ``prompt`` on a fixed ring cache; yields :class:`Token` s.

    >>> for tok in generate(model, tokenizer, "Once upon a time", config=GenerateConfig(64)):
    ...     print(tok.text, end="", flush=True)
    """
    from sepcli.separators import separator_mask
    from sepcli.stream.engine import StreamEngine

    stream = stream or StreamConfig()
    config = config or GenerateConfig()
    ids = prompt_ids(tokenizer, prompt)
    if not ids:
        raise ConfigError("the prompt is empty and the tokenizer has no BOS token to start from")
    engine = StreamEngine(model, stream, separator_mask(tokenizer), score=False)
    decoder = Decoder(engine, tokenizer, config.sampling, stop_ids(model, tokenizer))
    for _ in decoder.prefill([ids]):
        pass
    yield from decoder.decode(config.max_new_tokens, config.stop, config.ignore_eos)
