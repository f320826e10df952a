"""GemFilter over a document longer than the model's context: the filter pass runs over equal
contiguous segments of the document, each wrapped in the same template head and question tail
so that it fits, and the top-k is then taken over the scores of all segments at once.

Within a segment a token's score is its share of the question's per-head softmax attention, as
in the single pass; segments of equal length spread the same attention mass over the same number
of tokens, so their scores compare. Memory is that of one segment's filter pass; time grows
linearly with the document. The answer pass sees only the selected tokens, so the template,
the question and the k tokens must fit in the context together (checked before any compute).
Segments leave room for a question of up to :data:`QUESTION_RESERVE` tokens, so that their
layout, and with it a document's reading (:mod:`reading`), is the same for every question.
"""

from __future__ import annotations

import torch

from sepcli.errors import ConfigError, ContextLimitError
from sepcli.gemfilter.prefix import PrefixKV, prefix_steps, question_scores
from sepcli.gemfilter.prompt import Prompt

QUESTION_RESERVE = 128


def segment_bounds(length: int, budget: int) -> list[tuple[int, int]]:
    """Fewest contiguous [start, end) pieces of range(length) no longer than ``budget``, with
    lengths that differ by at most one."""
    if length <= 0:
        return []
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    count = -(-length // budget)
    base, extra = divmod(length, count)  # the first ``extra`` pieces take one token more
    ends = [(i + 1) * base + min(i + 1, extra) for i in range(count)]
    return list(zip([0, *ends[:-1]], ends, strict=True))


def question_reserve(context: int) -> int:
    """Tokens set aside for the question tail when the document is split to fit the context:
    the segment layout then does not depend on the question (up to this length), so one
    reading of the document serves every question (:mod:`prefix`)."""
    return min(QUESTION_RESERVE, context // 8)


def plan_segments(
    head: int, doc_len: int, tail: int, context: int | None, segment_tokens: int | None = None
) -> list[tuple[int, int]]:
    """Document-token bounds of the filter segments for a prompt of ``head`` + ``doc_len`` +
    ``tail`` tokens: one segment when it fits the context and the document is at most
    ``segment_tokens`` long (None = no such cap). Over the context, each segment leaves room
    for a tail of at least :func:`question_reserve` tokens.

    Raises ContextLimitError when the template and question leave no room for the document."""
    budget = doc_len if segment_tokens is None else min(doc_len, segment_tokens)
    if context and head + doc_len + tail > context:
        if context - head - tail < 1:
            raise ContextLimitError(
                f"the question and chat template alone take {head + tail} tokens of the "
                f"model's {context}-token context: ask a shorter question"
            )
        room = context - head - max(tail, question_reserve(context))
        budget = min(budget, room if room >= 1 else context - head - tail)
    return segment_bounds(doc_len, max(1, budget))


def plan(
    prompt: Prompt, context: int | None, segment_tokens: int | None = None
) -> list[tuple[int, int]]:
    """:func:`plan_segments` for ``prompt``."""
    tail = prompt.n - prompt.doc_end
    return plan_segments(prompt.doc_start, prompt.doc_len, tail, context, segment_tokens)


def check_answer_fits(prompt: Prompt, context: int | None, topk: int, protect: bool) -> None:
    """ConfigError unless the answer prompt (kept template/question + k tokens) fits the context."""
    if not context or prompt.n <= context:
        return
    fixed = prompt.n - prompt.doc_len if protect else 0
    if fixed + topk > context:
        raise ConfigError(
            f"--topk {topk} is too large for a document longer than the context: the answer pass "
            f"reads the {topk} kept tokens"
            + (f" plus {fixed} question and template tokens" if fixed else "")
            + f", at most {context}; use --topk {max(1, context - fixed)} or less"
        )


def split_scores(
    model,
    prompt: Prompt,
    layer: int,
    window: int,
    bounds: list[tuple[int, int]],
    rows: int = 0,
    prefixes: list[PrefixKV] | None = None,
) -> torch.Tensor:
    """Scores [n] (float32, CPU) of every prompt token, one filter pass per segment.

    Each pass is :func:`prefix.question_scores` over the segment's head + document prefix:
    ``prefixes[j]`` when the document was read beforehand for these ``bounds``, else read now
    (``rows``: the layer-r prefix queries a numeric window needs, :func:`prefix.query_rows`).
    A document token's score comes from its own segment's pass; a template or question token's
    score is its mean over the segments (it appears in every one)."""
    device = next(model.parameters()).device
    head, tail = prompt.ids[: prompt.doc_start], prompt.ids[prompt.doc_end :]
    h, t = head.numel(), tail.numel()
    scores = torch.zeros(prompt.n, dtype=torch.float32)
    outside = torch.zeros(h + t, dtype=torch.float32)
    for j, (s, e) in enumerate(bounds):
        if prefixes is None:
            doc = prompt.ids[prompt.doc_start + s : prompt.doc_start + e]
            steps = prefix_steps(model, torch.cat([head, doc]).to(device), layer, rows)
        else:
            steps = prefixes[j].steps()
        seg = question_scores(model, steps, h + e - s, tail.to(device), layer, window)
        seg = seg.float().cpu()
        scores[prompt.doc_start + s : prompt.doc_start + e] = seg[h : h + (e - s)]
        outside += torch.cat([seg[:h], seg[h + (e - s) :]])
    outside /= max(1, len(bounds))
    scores[: prompt.doc_start] = outside[:h]
    scores[prompt.doc_end :] = outside[h:]
    return scores
