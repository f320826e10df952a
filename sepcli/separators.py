"""Which token ids are SepLLM separators, for any tokenizer.

Rule (after SepLLM, arXiv 2412.12094, whose official code lists ``. , ? ! ; : ' ' \\t \\n``): a
token is a separator when its decoded text is non-empty and made only of separator characters. This catches merged tokens such as "\\n\\n", " ." or ".\\n" that a
hard-coded id list misses. Special tokens (BOS/EOS/chat markers) are never separators.
"""

from __future__ import annotations

import torch

SEPARATOR_CHARS = frozenset(".,?!;: \t\n")


def is_separator_text(text: str) -> bool:
    return bool(text) and all(ch in SEPARATOR_CHARS for ch in text)


def separator_token_ids(tokenizer) -> list[int]:
    """Sorted ids of every vocabulary token whose decoded text is only separator characters."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab_size = len(tokenizer)
    ids = [i for i in range(vocab_size) if i not in special]
    texts = tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return [i for i, t in zip(ids, texts, strict=True) if is_separator_text(t)]


def separator_mask(tokenizer, device: torch.device | str = "cpu") -> torch.Tensor:
    """Bool lookup table of shape [vocab]: ``mask[token_id]`` is True for separators."""
    mask = torch.zeros(len(tokenizer), dtype=torch.bool)
    ids = separator_token_ids(tokenizer)
    if ids:
        mask[torch.tensor(ids)] = True
    return mask.to(device)
