"""The QA prompt: the model's chat template with the document first and the question last.

The last prompt token is what "asks" in GemFilter's filter layer, so the question must come
after the document. The prompt is tokenized in three pieces (template head + document,
document, question + template tail) so we know exactly which token ids are document tokens;
the document's char offsets per token are kept for highlighting and needle bookkeeping.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from sepcli.errors import ContextLimitError, InputError

_SLOT = "\x00SEPCLI-DOCUMENT\x00"
SENTENCE_END = frozenset(".?!\n")
MAX_SENTENCE_TOKENS = 64
_PLAIN_TEMPLATE = (
    "Read the document and answer the question.\n\nDocument:\n{doc}\n\nQuestion: {q}\nAnswer:"
)


@dataclass(frozen=True)
class Prompt:
    """Token ids of a prompt and where the document sits in it.

    ids: [n] int64. Document tokens are ids[doc_start:doc_end].
    doc_offsets: (start, end) char offsets into ``document`` for each document token.
    build_s: seconds spent building it (tokenizing); part of a run's time to first token.
    """

    ids: torch.Tensor
    doc_start: int
    doc_end: int
    document: str
    doc_offsets: list[tuple[int, int]]
    build_s: float = field(default=0.0, compare=False)

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def doc_len(self) -> int:
        """Document tokens; the other ``n - doc_len`` are the template and the question."""
        return self.doc_end - self.doc_start

    def window(self, window: int | None) -> int:
        """Query window in tokens: ``window``, or for None every token after the document."""
        return max(1, min(self.n, self.n - self.doc_end if window is None else window))

    def document_mask(self) -> torch.Tensor:
        """[n] bool, True on document tokens."""
        mask = torch.zeros(self.n, dtype=torch.bool)
        mask[self.doc_start : self.doc_end] = True
        return mask

    def sentences(
        self, max_tokens: int = MAX_SENTENCE_TOKENS, *, blank: bool = True
    ) -> list[tuple[int, int]]:
        """Prompt-position [start, end) spans over the document: each ends after a token whose
        text holds '.', '?', '!' or a newline, or after ``max_tokens`` tokens (so an
        unpunctuated stretch such as a table or code cannot become one huge unit). With
        ``blank=False`` the spans that are only whitespace (blank lines) are left out."""
        spans, start = [], self.doc_start
        for i, (s, e) in enumerate(self.doc_offsets):
            pos = self.doc_start + i
            if pos + 1 - start >= max_tokens or not SENTENCE_END.isdisjoint(self.document[s:e]):
                spans.append((start, pos + 1))
                start = pos + 1
        if start < self.doc_end:
            spans.append((start, self.doc_end))
        if blank:
            return spans
        off = self.doc_offsets
        return [
            (a, b)
            for a, b in spans
            if self.document[off[a - self.doc_start][0] : off[b - 1 - self.doc_start][1]].strip()
        ]

    def tokens_of_chars(self, start: int, end: int) -> list[int]:
        """Prompt positions of the document tokens overlapping document chars [start, end)."""
        return [
            self.doc_start + i for i, (s, e) in enumerate(self.doc_offsets) if s < end and e > start
        ]


def _user_message(question: str) -> str:
    return f"{_SLOT}\n\nQuestion: {question}"


def _template_text(tokenizer, question: str) -> str:
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": _user_message(question)}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _PLAIN_TEMPLATE.format(doc=_SLOT, q=question)


def _encode(tokenizer, text: str) -> list[int]:
    # The template text already carries BOS / role tokens as text: add nothing more.
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


@dataclass(frozen=True)
class DocumentTokens:
    """A document tokenized on its own (the middle piece of every prompt about it): ids and
    the (start, end) char offsets of each token."""

    text: str
    ids: list[int]
    offsets: list[tuple[int, int]]


def encode_document(tokenizer, document: str) -> DocumentTokens:
    if not document.strip():
        raise InputError("the document is empty")
    enc = tokenizer(document, add_special_tokens=False, return_offsets_mapping=True)
    return DocumentTokens(document, enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]])


def template_pieces(tokenizer, question: str) -> tuple[list[int], list[int]]:
    """Token ids of the template head (before the document) and tail (question onwards)."""
    head, tail = _template_text(tokenizer, question.strip()).split(_SLOT)
    return _encode(tokenizer, head), _encode(tokenizer, tail)


def build_prompt(
    tokenizer,
    document: str,
    question: str,
    context_length: int | None = None,
    doc: DocumentTokens | None = None,
) -> Prompt:
    """Chat-template prompt with the document then the question; raises InputError /
    ContextLimitError. ``doc``: ``document`` already tokenized (many questions, one document)."""
    if not question.strip():
        raise InputError("the question is empty")
    t0 = time.perf_counter()
    if doc is None or doc.text != document:
        doc = encode_document(tokenizer, document)
    doc_ids, offsets = doc.ids, doc.offsets
    head_ids, tail_ids = template_pieces(tokenizer, question)
    ids = head_ids + doc_ids + tail_ids
    if context_length and len(ids) > context_length:
        raise ContextLimitError(
            f"the prompt is {len(ids)} tokens but the model's context is {context_length}: "
            "GemFilter (--method gemfilter, without --no-split) filters a longer document "
            "segment by segment; otherwise shrink the document or use a model with a longer context"
        )
    return Prompt(
        ids=torch.tensor(ids, dtype=torch.long),
        doc_start=len(head_ids),
        doc_end=len(head_ids) + len(doc_ids),
        document=document,
        doc_offsets=offsets,
        build_s=time.perf_counter() - t0,
    )
