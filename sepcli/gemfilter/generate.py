"""Plain autoregressive decoding with an ordinary HF KV cache, yielding text as it is produced.

Used for both the answer pass of GemFilter (the selected ids, fresh positions 0..k-1) and
``--method full`` (the whole prompt). Greedy when temperature is 0, else softmax sampling.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def stop_ids(model, tokenizer) -> set[int]:
    """Token ids that end an answer: the tokenizer's EOS and the generation config's EOS ids."""
    ids: set[int] = set()
    for value in (
        getattr(tokenizer, "eos_token_id", None),
        getattr(model.generation_config, "eos_token_id", None),
    ):
        if isinstance(value, int):
            ids.add(value)
        elif value:
            ids.update(int(v) for v in value)
    return ids


def _next_token(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """logits [vocab] -> one token id."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = (logits.float() / temperature).softmax(-1)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.inference_mode()
def generate_ids(
    model,
    ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    stop: set[int] = frozenset(),
    seed: int = 0,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after prompt ``ids`` [T] (stop ids not yielded)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    generator = None
    if temperature > 0:
        generator = torch.Generator(device=device).manual_seed(seed)
    cache = DynamicCache(config=model.config)
    x = ids.to(device).unsqueeze(0)  # (1, T)
    pos = torch.arange(x.shape[1], device=device).unsqueeze(0)
    for _ in range(max_new_tokens):
        out = model(
            input_ids=x, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        tok = _next_token(out.logits[0, -1], temperature, generator)
        if tok in stop:
            return
        yield tok
        x = torch.tensor([[tok]], device=device)
        pos = pos[:, -1:] + 1


def stream_text(tokenizer, token_ids: Iterator[int]) -> Iterator[tuple[str, int]]:
    """Turn a stream of ids into ``(text piece, id)``: each piece is the newly decoded text.

    Decoding the whole answer each time keeps multi-token characters and leading spaces right;
    a piece ending in an unfinished UTF-8 sequence is held back until the next token.
    """
    seen: list[int] = []
    shown = ""
    for tok in token_ids:
        seen.append(tok)
        text = tokenizer.decode(seen, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            yield "", tok
            continue
        piece, shown = text[len(shown) :], text
        yield piece, tok


def answer_pieces(
    model,
    tokenizer,
    ids: torch.Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    seed: int = 0,
) -> Iterator[tuple[str, int]]:
    """The answer after prompt ``ids`` [T] as ``(text piece, id)`` per new token (see
    :func:`stream_text`), ending at the model's stop ids or after ``max_new_tokens``."""
    stop = stop_ids(model, tokenizer)
    tokens = generate_ids(model, ids, max_new_tokens, temperature=temperature, stop=stop, seed=seed)
    return stream_text(tokenizer, tokens)
