"""Scoring batches of records: the one class both the CLI and Ray Data run.

:class:`ScoreRecords` is Ray Data's callable-class shape: the model is loaded once in
``__init__`` and every call scores one batch of records. ``sepcli score`` calls
:meth:`ScoreRecords.score_records` on the records it reads; ``sepcli score --ray`` hands the class
to ``Dataset.map_batches`` and each actor calls ``__call__`` on a batch of JSON lines, which
parses them with the same function and calls the same method. The two paths cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sepcli.errors import ContextLimitError
from sepcli.models import LoadedModel, load_model
from sepcli.score.records import ReadCounts, Record, parse_json_line, render, score_fields
from sepcli.score.scorer import DocScore, DocScorer
from sepcli.separators import separator_mask
from sepcli.stream.config import StreamConfig

# A batch of the CLI ends after this many records or characters (whichever comes first): the
# documents are length-sorted inside a batch, and Ctrl-C stops after the batch in progress.
BATCH_RECORDS = 512
BATCH_CHARS = 1 << 19


@dataclass(frozen=True)
class Outcome:
    """What became of one record: its output line (parts to write, see
    :func:`~sepcli.score.records.render`), its score (None on error), the error."""

    parts: list
    score: DocScore | None = None
    error: str | None = None

    @property
    def line(self) -> str:
        return b"".join(self.parts).decode()


class ScoreRecords:
    """Load a model once; score batches of records (Ray Data's ``map_batches`` callable class).

    Parameters
    ----------
    model, device, dtype : what :func:`sepcli.models.load_model` loads (ignored with ``loaded``).
    config : the cache for documents longer than it (a StreamConfig or its ``to_dict()``).
    field : dotted field of a JSON line that holds the document.
    prefix : put before the added field names (``tokens``, ``nll``, ``ppl``, ``error``).
    batch_tokens : padded tokens per forward for documents that fit the cache (None: by
        device, :func:`sepcli.score.scorer.default_batch_tokens`).
    loaded : an already loaded model (the CLI loads it with a spinner).
    """

    def __init__(
        self,
        model: str = "smollm2",
        *,
        device: str = "auto",
        dtype: str = "auto",
        config: StreamConfig | dict | None = None,
        field: str = "text",
        prefix: str = "",
        batch_tokens: int | None = None,
        loaded: LoadedModel | None = None,
    ):
        self.lm = loaded if loaded is not None else load_model(model, device=device, dtype=dtype)
        if isinstance(config, dict):
            config = StreamConfig(**config)
        self.config = config or StreamConfig()
        self.field, self.prefix = field, prefix
        tok = self.lm.tokenizer
        self.scorer = DocScorer(
            self.lm.model, tok, self.config, separator_mask(tok), batch_tokens=batch_tokens
        )

    def score_records(self, records: list[Record]) -> list[Outcome]:
        """One Outcome per record, in order (a bad record's line carries its ``error``)."""
        good = [i for i, r in enumerate(records) if r.error is None]
        scores = self.scorer.score([records[i].text for i in good])
        problems = {i: r.error for i, r in enumerate(records) if r.error is not None}
        for i, score in zip(good, scores, strict=True):
            if isinstance(score, ContextLimitError):
                problems[i] = str(score)
        outcomes = []
        done = dict(zip(good, scores, strict=True))
        for i, record in enumerate(records):
            if i in problems:
                added = {f"{self.prefix}error": problems[i]}
                if record.obj is None:
                    added[f"{self.prefix}input"] = record.raw.decode().rstrip("\r\n")
                outcomes.append(Outcome(render(record, added), error=problems[i]))
            else:
                score = done[i]
                outcomes.append(Outcome(render(record, score_fields(score, self.prefix)), score))
        return outcomes

    def __call__(self, batch: dict) -> dict:
        """Ray Data: ``{"text": [JSON line, ...], ...}`` -> ``{"out": [...], "error": [...]}``
        plus the input's other columns (``path``). A blank line's ``out`` is None."""
        counts = ReadCounts()  # the reading task counted replacements already
        parsed = [parse_json_line(str(x).encode(), self.field, counts) for x in batch["text"]]
        records = [r for r in parsed if r is not None]
        outcomes = iter(self.score_records(records))
        out, errors = [], []
        for record in parsed:
            outcome = next(outcomes) if record is not None else None
            out.append(None if outcome is None else outcome.line)
            errors.append(None if outcome is None else outcome.error)
        rest = {k: list(v) for k, v in batch.items() if k != "text"}
        return {"out": out, "error": errors, **rest}


def batches(
    records: Iterable[Record], stop_at_error: bool, max_records: int = BATCH_RECORDS
) -> Iterator[list[Record]]:
    """Consecutive records in batches of at most ``max_records`` records / ``BATCH_CHARS``
    characters (a longer record is a batch of its own). With ``stop_at_error`` a bad record
    ends its batch, so what comes after it is never scored."""
    batch: list[Record] = []
    chars = 0
    for record in records:
        size = len(record.text or "")
        if batch and chars + size > BATCH_CHARS:
            yield batch
            batch, chars = [], 0
        batch.append(record)
        chars += size
        if len(batch) >= max_records or (stop_at_error and record.error is not None):
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch
