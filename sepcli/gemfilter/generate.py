"""Plain autoregressive decoding with an ordinary HF KV cache, yielding token ids as produced.

Used for both the answer pass of GemFilter (the selected ids, fresh positions 0..k-1) and
``--method full`` (the whole prompt). The next-token rule, the reply's stop ids and the
incremental detokeniser are the ones every sepcli decoder uses (:mod:`sepcli.generate`).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from sepcli.generate.detok import stream_text
from sepcli.generate.sampling import Sampler, SamplingConfig, stop_ids


@torch.inference_mode()
def generate_ids(
    model,
    ids: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    stop: set[int] = frozenset(),
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids after prompt ``ids`` [T] (stop ids not yielded)."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    sampler = Sampler(sampling, device)
    cache = DynamicCache(config=model.config)
    x = ids.to(device).unsqueeze(0)  # (1, T)
    pos = torch.arange(x.shape[1], device=device).unsqueeze(0)
    for _ in range(max_new_tokens):
        out = model(input_ids=x, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1)
        tok = sampler(out.logits[0, -1])
        if tok in stop:
            return
        yield tok
        x = torch.tensor([[tok]], device=device)
        pos = pos[:, -1:] + 1


def answer_pieces(
    model,
    tokenizer,
    ids: torch.Tensor,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
) -> Iterator[tuple[str, int]]:
    """The answer after prompt ``ids`` [T] as ``(text piece, id)`` per new token (see
    :func:`stream_text`), ending at the model's stop ids or after ``max_new_tokens``."""
    stop = stop_ids(model, tokenizer)
    tokens = generate_ids(model, ids, max_new_tokens, sampling, stop)
    return stream_text(tokenizer, tokens)
