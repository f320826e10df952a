"""From scores to kept positions: GemFilter's top-k, by tokens or by whole sentences.

Three levels, each calling the one below:

- :func:`top_tokens`: the k best-scoring tokens (the paper's rule), optionally smoothed, with
  protected positions kept on top of k.
- :func:`top_spans`: whole spans (sentences), best first by their highest token score, while
  their tokens total at most k.
- :func:`choose_positions`: what a QA run keeps for a prompt: ``top_spans`` over the prompt's
  sentences for ``unit="sentence"``, else ``top_tokens``; the template and question protected.

:class:`Selected` is the result of a filter pass over a prompt, and :func:`kept_text` joins
its document runs back into text (``sepcli gemfilter``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepcli.gemfilter.prompt import MAX_SENTENCE_TOKENS, Prompt


@dataclass
class Selected:
    """The filter's choice: prompt positions [k] (sorted) and the scores [n] of every token;
    ``segments`` filter passes produced them (1 unless the prompt exceeds the context);
    ``reused``: they read a document reading made beforehand (many questions, one document)."""

    prompt: Prompt
    indices: torch.Tensor
    scores: torch.Tensor
    layer: int
    segments: int = 1
    reused: bool = False

    def document_indices(self) -> list[int]:
        """Kept positions that are document tokens (prompt positions, sorted)."""
        p = self.prompt
        return [i for i in self.indices.tolist() if p.doc_start <= i < p.doc_end]


def kept_text(chosen: Selected, tokenizer, gap: str) -> str:
    """The kept document text in order: each run of adjacent kept tokens decoded on its own,
    runs joined by ``gap``."""
    runs: list[list[int]] = []
    for i in chosen.document_indices():
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return gap.join(tokenizer.decode(chosen.prompt.ids[r].tolist()) for r in runs)


def smooth_scores(scores: torch.Tensor, width: int) -> torch.Tensor:
    """Moving average of [T] scores over ``width`` (odd) tokens; edges average what exists."""
    if width <= 1:
        return scores
    pooled = F.avg_pool1d(
        scores.view(1, 1, -1), width, stride=1, padding=width // 2, count_include_pad=False
    )
    return pooled.view(-1)


def top_tokens(
    scores: torch.Tensor, k: int, *, smooth: int = 1, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices (sorted, document order) of the k top-scoring tokens of [T] ``scores``.

    keep: optional [T] bool of tokens kept regardless of score (the question and template);
    then k counts the *other* tokens only, so exactly min(k, #others) of them are added.
    Without ``keep``: min(k, T) indices.
    """
    t = scores.shape[-1]
    s = smooth_scores(scores.float(), smooth)
    if keep is None or not bool(keep.any()):
        if k >= t:
            return torch.arange(t, device=scores.device)
        return s.topk(k).indices.sort().values
    keep = keep.to(s.device)
    others = (~keep).nonzero().view(-1)
    if k >= others.numel():
        return torch.arange(t, device=scores.device)
    best = others[s[others].topk(k).indices]
    return torch.cat([keep.nonzero().view(-1), best]).sort().values


def top_spans(
    scores: torch.Tensor, spans: list[tuple[int, int]], k: int, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices (sorted) of the ``keep`` positions plus whole spans, best first by their highest
    token score, while the spans' tokens total at most ``k`` (a span that would overflow is
    skipped for smaller ones).

    spans: the disjoint [start, end) candidates (sentences of the document); a position in no
    span is never selected unless ``keep`` ([T] bool: the question and template) marks it."""
    t = scores.shape[-1]
    keep = torch.zeros(t, dtype=torch.bool) if keep is None else keep.cpu()
    s = scores.float().cpu()
    best = [float(s[a:b].max()) for a, b in spans]
    chosen = [keep.nonzero().view(-1)]
    room = k
    for j in sorted(range(len(spans)), key=best.__getitem__, reverse=True):
        a, b = spans[j]
        if b - a <= room:
            chosen.append(torch.arange(a, b))
            room -= b - a
            if room == 0:
                break
    return torch.cat(chosen).sort().values.to(scores.device)


def sentence_units(prompt: Prompt, protect: bool, topk: int) -> list[tuple[int, int]]:
    """Candidates for ``unit=sentence``: the document's sentences that are not blank (blank
    lines draw attention like sinks but say nothing), cut to at most ``topk`` tokens so the
    best one always fits, plus, without ``protect``, every template and question token on its
    own, as the paper lets them compete."""
    units = prompt.sentences(min(MAX_SENTENCE_TOKENS, topk), blank=False)
    if not protect:
        outside = [*range(prompt.doc_start), *range(prompt.doc_end, prompt.n)]
        units += [(i, i + 1) for i in outside]
    return units


def choose_positions(
    prompt: Prompt, scores: torch.Tensor, k: int, unit: str, smooth: int, keep: torch.Tensor | None
) -> torch.Tensor:
    """Kept prompt positions (sorted) for [n] ``scores``: whole sentences (:func:`top_spans`)
    or the k best tokens (:func:`top_tokens`) by ``unit``, plus the ``keep`` positions (the
    protected template and question, or None)."""
    if unit == "sentence":
        return top_spans(scores, sentence_units(prompt, keep is not None, k), k, keep=keep)
    return top_tokens(scores, k, smooth=smooth, keep=keep)
