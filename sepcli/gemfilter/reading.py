"""Many questions about one document: its filter-pass prefix read once, then reused.

A :class:`DocumentReading` holds, for each filter segment, the keys and values of the template
head + that segment's document tokens in layers 0..r (:mod:`prefix`), and what identifies them
(:func:`identity`). The segment layout is planned without a question, leaving
:func:`segments.question_reserve` tokens for it, so every question up to that length has the
same layout as a one-shot ``ask`` and is served by the reading; a longer question (or a
template whose head depends on the question) gets a fresh filter pass, with the same result.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sepcli import arch
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.prefix import PrefixKV, query_rows, read_prefix
from sepcli.gemfilter.prompt import DocumentTokens, Prompt, template_pieces
from sepcli.gemfilter.segments import plan_segments, question_reserve
from sepcli.stream.checkpoint import ids_digest, model_fingerprint

# A placeholder question: the template head is rendered with it, and each real question's head
# is compared with it before the reading serves that question.
_ANY_QUESTION = "?"


@dataclass
class DocumentReading:
    """A document's prefix K/V per segment. ``identity``: what must match for reuse (model,
    dtype, layer, document, segment layout, template head); ``seconds``: what reading (or
    loading) it took; ``source``: "read" or "cache"."""

    identity: dict
    head: list[int]
    bounds: list[tuple[int, int]]
    prefixes: list[PrefixKV]
    seconds: float = 0.0
    source: str = "read"

    def serves(self, prompt: Prompt, bounds: list[tuple[int, int]]) -> bool:
        """True when ``prompt``'s filter passes would read exactly these prefixes."""
        return (
            bounds == self.bounds
            and prompt.ids[: prompt.doc_start].tolist() == self.head
            and prompt.doc_len == self.identity["document_tokens"]
        )

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.prefixes)


def layout(model, tokenizer, doc: DocumentTokens, cfg: QAConfig):
    """(template head ids, segment bounds) of the document's reading, before any question."""
    head, _ = template_pieces(tokenizer, _ANY_QUESTION)
    context = arch.shape_of(model).context_length or None
    reserve = question_reserve(context) if context else 0
    return head, plan_segments(len(head), len(doc.ids), reserve, context, cfg.segment_tokens)


def identity(model, model_name: str, doc: DocumentTokens, head: list[int], bounds, cfg) -> dict:
    """What a stored reading must match: model fingerprint (weights digest, dtype), filter
    layer, prefix queries kept, the document (text and token digests), layout and head."""
    return {
        "model": model_fingerprint(model, model_name),
        "layer": cfg.layer,
        "query_rows": query_rows(cfg.window),
        "document_sha256": hashlib.sha256(doc.text.encode("utf-8", "surrogatepass")).hexdigest(),
        "document_tokens": len(doc.ids),
        "tokens_sha256": ids_digest(doc.ids).hex(),
        "template_head_sha256": ids_digest(head).hex(),
        "segments": [list(b) for b in bounds],
    }


def make_reading(
    model,
    model_name: str,
    tokenizer,
    doc: DocumentTokens,
    cfg: QAConfig,
    progress: Callable[[int, int], None] | None = None,
) -> DocumentReading:
    """Read every segment's prefix through layers 0..r (``progress(done, total)`` after each)."""
    t0 = time.perf_counter()
    head, bounds = layout(model, tokenizer, doc, cfg)
    device = next(model.parameters()).device
    rows = query_rows(cfg.window)
    prefixes = []
    for j, (s, e) in enumerate(bounds):
        ids = torch.tensor(head + doc.ids[s:e], dtype=torch.long, device=device)
        prefixes.append(read_prefix(model, ids, cfg.layer, rows))
        if progress is not None:
            progress(j + 1, len(bounds))
    meta = identity(model, model_name, doc, head, bounds, cfg)
    return DocumentReading(meta, head, bounds, prefixes, time.perf_counter() - t0)
