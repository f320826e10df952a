"""Choosing the next token: greedy, or temperature / top-k / top-p sampling from a seeded
generator, and which ids end a reply.

One sampler for every decoding loop in sepcli (``generate``, ``chat`` and ``ask``'s answer pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sepcli.errors import ConfigError

if TYPE_CHECKING:  # SamplingConfig is read to parse options: torch loads with the first Sampler
    import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How the next token is picked from the logits.

    Attributes
    ----------
    temperature : 0 is greedy (argmax); > 0 divides the logits before softmax sampling.
    top_k : keep only the k most likely tokens (0: all).
    top_p : keep the smallest set of most likely tokens whose probability reaches p (1: all).
    seed : seeds the sampling generator: the same seed gives the same tokens.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        t, p = self.temperature, self.top_p
        if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
            raise ConfigError(f"--temperature must be a number >= 0, got {t}")
        if not isinstance(p, (int, float)) or not (0 < p <= 1):
            raise ConfigError(f"--top-p must be in (0, 1], got {p}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ConfigError(f"--top-k must be an integer >= 0, got {self.top_k}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"--seed must be an integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Sampler:
    """``sampler(logits [vocab]) -> token id``; owns the seeded generator, so a whole run (or a
    whole chat session) draws from one reproducible sequence."""

    def __init__(self, config: SamplingConfig, device: torch.device | str = "cpu"):
        import torch

        self.config = config
        self.generator = None
        if not config.greedy:
            self.generator = torch.Generator(device=device).manual_seed(config.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        return sample(logits, self.config, self.generator)

    def state_dict(self) -> dict:
        return {"rng": None if self.generator is None else self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if self.generator is not None and state.get("rng") is not None:
            self.generator.set_state(state["rng"])


def sample(
    logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None = None
) -> int:
    """logits [vocab] -> one token id (greedy when ``config.temperature`` is 0)."""
    import torch

    if config.greedy:
        return int(logits.argmax())
    scores = logits.float() / config.temperature  # (V,)
    if 0 < config.top_k < scores.numel():
        kth = torch.topk(scores, config.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if config.top_p < 1:
        sorted_scores, order = scores.sort(descending=True)
        cum = sorted_scores.softmax(-1).cumsum(-1)
        # drop a token when the ones before it already reach p (the first is always kept)
        drop_sorted = (cum - sorted_scores.softmax(-1)) >= config.top_p
        scores = scores.masked_fill(drop_sorted.scatter(0, order, drop_sorted), float("-inf"))
    probs = scores.softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end a reply: the tokenizer's EOS and the generation config's EOS ids."""
    ids: set[int] = set()
    generation = getattr(model, "generation_config", None)
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(generation, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids
