"""One question over one document, start to finish, as a stream of events for the CLI.

text -> prompt ids -> (gemfilter: filter pass at layer r -> top-k ids in document order) ->
generation on those ids (or on the whole prompt for ``full``) -> answer pieces -> result.
The library never prints: the caller renders the events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from sepcli import arch
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.generate import answer_pieces
from sepcli.gemfilter.prefix import query_rows
from sepcli.gemfilter.prompt import DocumentTokens, Prompt, build_prompt
from sepcli.gemfilter.reading import DocumentReading
from sepcli.gemfilter.segments import check_answer_fits, plan, split_scores
from sepcli.gemfilter.selection import Selected, choose_positions
from sepcli.generate.repeats import RepeatGuard
from sepcli.memory import PeakMemory


@dataclass
class AnswerText:
    """Newly decoded text of the answer (one or more tokens' worth), in order."""

    text: str


@dataclass
class Result:
    answer: str
    method: str
    layer: int | None
    topk: int | None
    prompt_tokens: int
    selected_tokens: int
    ttft_s: float | None
    total_s: float
    peak_mem_bytes: int
    peak_mem_kind: str
    new_tokens: int
    segments: int | None
    stop_reason: str = "eos"  # eos | max | repeat (sepcli.generate.repeats)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prepare(
    model, tokenizer, document: str, question: str, cfg: QAConfig, doc: DocumentTokens | None = None
) -> Prompt:
    """Validate the layer against the model and build the prompt (raises before any compute).

    A prompt longer than the context is refused, except by gemfilter with ``split``: then the
    filter runs segment by segment, and only the answer prompt must fit (checked here)."""
    shape = arch.shape_of(model)
    context = shape.context_length or None
    if cfg.method == "gemfilter":
        if cfg.layer is None:
            raise ValueError("QAConfig.layer must be resolved before running gemfilter")
        cfg.check_layer(shape.layers)
        if cfg.split:
            prompt = build_prompt(tokenizer, document, question, None, doc)
            plan(prompt, context, cfg.segment_tokens)
            check_answer_fits(prompt, context, cfg.topk, cfg.protect)
            return prompt
    return build_prompt(tokenizer, document, question, context, doc)


def segments_for(model, prompt: Prompt, segment_tokens: int | None = None) -> list[tuple[int, int]]:
    """Document-token bounds of the filter passes for ``prompt`` (one when it fits the context
    and ``segment_tokens`` does not cut it)."""
    return plan(prompt, arch.shape_of(model).context_length or None, segment_tokens)


def filter_prompt(
    model, prompt: Prompt, cfg: QAConfig, reading: DocumentReading | None = None
) -> Selected:
    """The whole GemFilter step for a prepared prompt: filter pass(es) at ``cfg.layer``, then
    the kept positions (:func:`selection.choose_positions`). ``reading``: the document's
    prefixes read beforehand, used when they are the ones this prompt's passes would read."""
    bounds = segments_for(model, prompt, cfg.segment_tokens)
    reused = reading is not None and reading.serves(prompt, bounds)
    scores = split_scores(
        model,
        prompt,
        cfg.layer,
        prompt.window(cfg.window),
        bounds,
        query_rows(cfg.window),
        reading.prefixes if reused else None,
    )
    keep = ~prompt.document_mask() if cfg.protect else None
    indices = choose_positions(prompt, scores, cfg.topk, cfg.unit, cfg.smooth, keep)
    return Selected(prompt, indices, scores, cfg.layer, len(bounds), reused)


def run_qa(
    model,
    tokenizer,
    document: str,
    question: str,
    cfg: QAConfig,
    prompt: Prompt | None = None,
    reading: DocumentReading | None = None,
) -> Iterator[Selected | AnswerText | Result]:
    """Yield ``Selected`` (gemfilter only), then ``AnswerText``s of the answer, then one ``Result``.

    ``prompt``: what :func:`prepare` returned for these arguments, so a caller that checked the
    prompt first does not tokenize the document twice. ``reading``: see :func:`filter_prompt`.
    ``ttft_s`` runs from the call to the first answer token, with prompt building included
    (also when the prompt was built before the call).
    """
    t0 = time.perf_counter()
    if prompt is None:
        prompt = prepare(model, tokenizer, document, question, cfg)
    else:
        t0 -= prompt.build_s
    device = next(model.parameters()).device
    pieces: list[str] = []
    ttft = None
    n_new = 0
    segments = None
    with PeakMemory(device) as mem:
        if cfg.method == "gemfilter":
            chosen = filter_prompt(model, prompt, cfg, reading)
            ids = prompt.ids[chosen.indices]
            segments = chosen.segments
            yield chosen
        else:
            ids = prompt.ids
        answer = answer_pieces(model, tokenizer, ids, cfg.max_new_tokens, cfg.sampling)
        loops, stop_reason = RepeatGuard(cfg.stop_repeats), "eos"
        for piece, tok in answer:
            n_new += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
            if piece:
                pieces.append(piece)
                yield AnswerText(piece)
            if loops.push(tok):
                stop_reason = "repeat"
                break
        else:
            stop_reason = "max" if n_new >= cfg.max_new_tokens else "eos"
    gem = cfg.method == "gemfilter"
    yield Result(
        answer="".join(pieces),
        method=cfg.method,
        layer=cfg.layer if gem else None,
        topk=cfg.topk if gem else None,
        prompt_tokens=prompt.n,
        selected_tokens=int(ids.shape[0]),
        ttft_s=ttft,
        total_s=time.perf_counter() - t0,
        peak_mem_bytes=mem.peak_bytes,
        peak_mem_kind=mem.kind,
        new_tokens=n_new,
        segments=segments,
        stop_reason=stop_reason,
    )


def answer_text(model, tokenizer, document: str, question: str, cfg: QAConfig) -> Result:
    """Run :func:`run_qa` to the end and return its Result (benchmarks, tests)."""
    for event in run_qa(model, tokenizer, document, question, cfg):
        if isinstance(event, Result):
            return event
    raise RuntimeError("run_qa ended without a result")
