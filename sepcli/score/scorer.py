"""Per-document perplexity, many documents at a time, every document scored whole.

A document is scored the way ``sepcli stream`` scores a text: the start token (BOS) and then the
document's tokens, each token predicted from everything before it in the document. Two paths,
exact for what they take:

- **Fits the cache** (BOS + tokens <= the ring's capacity): nothing would ever be evicted, so the
  ring is plain causal attention. Such documents are sorted by length and run through the model
  as right-padded batches, ``model.model(input_ids, attention_mask)``; the LM head then runs on
  the real positions only (never on padding), in row blocks that bound the [rows, vocab] logits.
- **Longer than the cache**: streamed through :class:`~sepcli.stream.engine.StreamEngine`, a
  chunk at a time, so nothing is truncated and memory stays that of one ring. A very long text
  is tokenized in pieces as it streams (it is never held as one list of ids).

Both paths give the score ``stream`` gives for the text alone, up to float rounding.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sepcli import arch
from sepcli.errors import ContextLimitError
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.stream.methods import make_method
from sepcli.stream.reader import MAX_PENDING_CHARS, safe_cut, start_token

# Padded tokens (batch x longest) per forward of the short-document path, by device: small
# batches on a CPU (a forward's activations stay in cache), large ones on a GPU. The figures
# are in docs/score.md (`bench/score.py batch-sizes`).
CPU_BATCH_TOKENS = 256
GPU_BATCH_TOKENS = 4096


def default_batch_tokens(device: torch.device) -> int:
    return CPU_BATCH_TOKENS if device.type == "cpu" else GPU_BATCH_TOKENS


# Rows of logits computed at once ([rows, vocab] fp32: 1024 x 49152 x 4 B = 192 MiB).
LOGIT_ROWS = 1024
# Texts longer than this many characters are tokenized in pieces while they stream.
PIECE_CHARS = 1 << 16


@dataclass(frozen=True)
class DocScore:
    """The score of one document: ``tokens`` scored and the sum of their NLL (nats)."""

    tokens: int
    nll_sum: float

    @property
    def nll(self) -> float | None:
        """Mean NLL per token (None for a document with no token to score)."""
        return self.nll_sum / self.tokens if self.tokens else None

    @property
    def ppl(self) -> float | None:
        nll = self.nll
        return None if nll is None else math.exp(min(nll, 700.0))


def text_pieces(text: str, size: int | None = None) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters that end where the tokenizer splits
    anyway (before a space that starts a word: :func:`sepcli.stream.reader.safe_cut`), so the
    pieces tokenize to the same ids as the whole. A stretch with no such point for
    ``MAX_PENDING_CHARS`` is cut where it stands, as the stream reader does."""
    size = size or PIECE_CHARS
    start, n = 0, len(text)
    while n - start > size:
        end = start + size
        cut = safe_cut(text[start:end])
        while cut == 0 and end - start <= MAX_PENDING_CHARS and end < n:
            end = min(n, end + size)
            cut = safe_cut(text[start:end])
        if cut == 0:
            if end >= n:
                break
            cut = end - start
        yield text[start : start + cut]
        start += cut
    if start < n:
        yield text[start:]


class DocScorer:
    """Scores lists of documents with one model and one cache configuration.

    Parameters
    ----------
    model : a HF *ForCausalLM of a family :mod:`sepcli.arch` supports, eval mode.
    tokenizer : its tokenizer.
    config : the ring used for documents longer than the cache (as ``sepcli stream``).
    separators : [vocab] bool lookup of separator ids (:func:`sepcli.separators.separator_mask`).
    batch_tokens : padded tokens per forward of the short-document path (None: by device,
        :func:`default_batch_tokens`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        config: StreamConfig,
        separators: torch.Tensor,
        batch_tokens: int | None = None,
    ):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.separators = separators
        self.head = start_token(tokenizer)
        method = make_method(config)
        self.capacity = method.ring_slots(arch.shape_of(model).context_length)  # fits: short
        self.limit = method.limit  # the most tokens a document may have (None: any)
        self.device = next(model.parameters()).device
        self.batch_tokens = batch_tokens or default_batch_tokens(self.device)

    def _ring(self) -> StreamEngine:
        return StreamEngine(self.model, self.config, self.separators)

    # ------------------------------------------------------------------ routing

    def score(self, texts: Sequence[str]) -> list[DocScore | ContextLimitError]:
        """One :class:`DocScore` per text, in order; a ContextLimitError in place of a text
        longer than the model's context with ``method='full'`` (the others are still scored)."""
        scores: list = [None] * len(texts)
        short: list[tuple[int, list[int]]] = []
        # Tokenizing can only shrink a text, so one over a piece's size is streamed unseen.
        small = [i for i, t in enumerate(texts) if len(t) <= PIECE_CHARS]
        ids = self._tokenize([texts[i] for i in small])
        for i, doc in zip(small, ids, strict=True):
            doc = self.head + doc
            if len(doc) <= self.capacity:
                short.append((i, doc))
            else:
                scores[i] = self._long_or_error([doc])
        for i, t in enumerate(texts):
            if scores[i] is None and len(t) > PIECE_CHARS:
                head, rest = self._peek(self._stream_ids(t))
                if rest is None:
                    short.append((i, head))
                else:
                    scores[i] = self._long_or_error(itertools.chain([head], rest))
        for i, score in self.score_short(short):
            scores[i] = score
        return scores

    def _long_or_error(self, blocks) -> DocScore | ContextLimitError:
        try:
            return self.score_long(blocks)
        except ContextLimitError as exc:
            return exc

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def _peek(self, blocks: Iterator[list[int]]) -> tuple[list[int], Iterator[list[int]] | None]:
        """The first ids of ``blocks`` up to just past the capacity; the rest, or None when the
        whole document fits the cache (then the first part is all of it)."""
        head: list[int] = []
        for block in blocks:
            head.extend(block)
            if len(head) > self.capacity:
                return head, blocks
        return head, None

    def _stream_ids(self, text: str) -> Iterator[list[int]]:
        yield list(self.head)
        for piece in text_pieces(text):
            yield self._tokenize([piece])[0]

    # ------------------------------------------------------------------ documents longer than the cache

    def score_long(self, blocks) -> DocScore:
        """Stream one document (token id blocks, start token included) through a fresh ring."""
        if self.limit is not None:  # longer than the cache is longer than this method allows
            raise ContextLimitError(
                f"the document is longer than the model's context of {self.limit} tokens "
                f"(--method {self.config.method} keeps every token): use --method sepllm to "
                "score it whole"
            )
        tokens, total = 0, 0.0
        for stats in self._ring().run(blocks):
            tokens += stats.scored
            total += stats.nll_sum
        return DocScore(tokens, total)

    # ------------------------------------------------------------------ documents that fit the cache

    def score_short(self, docs: list[tuple[int, list[int]]]) -> Iterator[tuple[int, DocScore]]:
        """(key, ids) -> (key, score), for documents that fit the cache, in length-sorted
        padded batches of at most ``batch_tokens`` padded tokens."""
        for key, ids in docs:
            if len(ids) < 2:  # nothing to predict: an empty document (or BOS-less one token)
                yield key, DocScore(max(0, len(ids) - 1), 0.0)
        order = sorted((d for d in docs if len(d[1]) >= 2), key=lambda d: len(d[1]), reverse=True)
        start = 0
        while start < len(order):
            longest = len(order[start][1])
            size = max(1, self.batch_tokens // max(1, longest))
            batch = order[start : start + size]
            start += len(batch)
            sums = self._padded_nll([ids for _, ids in batch])
            for (key, ids), total in zip(batch, sums, strict=True):
                yield key, DocScore(len(ids) - 1, total)

    @torch.inference_mode()
    def _padded_nll(self, docs: list[list[int]]) -> list[float]:
        """Sum of NLL of each document (ids incl. start token), one right-padded forward.

        Right padding keeps every real token at positions 0..n-1 and causal attention never
        looks right, so padding changes nothing but rounding."""
        lengths = torch.tensor([len(d) for d in docs])
        b, t = len(docs), int(lengths.max())
        ids = torch.zeros(b, t, dtype=torch.int64)
        for row, doc in enumerate(docs):
            ids[row, : len(doc)] = torch.as_tensor(doc)
        positions = torch.arange(t)
        mask = positions[None] < lengths[:, None]  # (B, T) real tokens
        predicts = positions[None] < (lengths[:, None] - 1)  # (B, T) tokens with a next token
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = arch.backbone(self.model)(
            input_ids=ids, attention_mask=mask.long(), use_cache=False
        ).last_hidden_state  # (B, T, hidden), final norm applied
        rows = hidden[predicts.to(self.device)]  # (N, hidden)
        targets = ids[:, 1:][predicts[:, :-1].to(self.device)]  # (N,)
        owner = torch.arange(b)[:, None].expand(b, t)[predicts].to(self.device)  # (N,)
        sums = torch.zeros(b, dtype=torch.float64, device=self.device)
        for lo in range(0, rows.shape[0], LOGIT_ROWS):
            part = slice(lo, lo + LOGIT_ROWS)
            logits = arch.lm_head(self.model, rows[part]).float()  # (rows, V)
            nll = F.cross_entropy(logits, targets[part], reduction="none")
            sums.index_add_(0, owner[part], nll.double())
        return sums.tolist()
