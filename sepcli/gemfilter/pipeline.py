"""One question over one document, start to finish, as a stream of events for the CLI.

text -> prompt ids -> (gemfilter: filter pass at layer r -> top-k ids in document order) ->
generation on those ids (or on the whole prompt for ``full``) -> answer pieces -> result.
The library never prints: the caller renders the events.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from sepcli import arch
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.filter import filter_scores, select
from sepcli.gemfilter.generate import generate_ids, stop_ids, stream_text
from sepcli.gemfilter.memory import PeakMemory
from sepcli.gemfilter.prompt import Prompt, build_prompt


@dataclass
class Selected:
    """The filter's choice: prompt positions [k] (sorted) and the scores [n] of every token."""

    prompt: Prompt
    indices: torch.Tensor
    scores: torch.Tensor
    layer: int


@dataclass
class Piece:
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

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def prepare(model, tokenizer, document: str, question: str, cfg: QAConfig) -> Prompt:
    """Validate the layer against the model and build the prompt (raises before any compute)."""
    shape = arch.shape_of(model)
    if cfg.method == "gemfilter":
        if cfg.layer is None:
            raise ValueError("QAConfig.layer must be resolved before running gemfilter")
        cfg.check_layer(shape.layers)
    return build_prompt(tokenizer, document, question, shape.context_length or None)


def select_tokens(model, prompt: Prompt, cfg: QAConfig) -> Selected:
    """Filter pass + top-k for a prepared prompt."""
    device = next(model.parameters()).device
    window = prompt.window(cfg.window)
    scores = filter_scores(model, prompt.ids.to(device), cfg.layer, window).float().cpu()
    keep = ~prompt.document_mask() if cfg.protect else None
    indices = select(scores, cfg.topk, smooth=cfg.smooth, keep=keep)
    return Selected(prompt, indices, scores, cfg.layer)


def run_qa(
    model, tokenizer, document: str, question: str, cfg: QAConfig
) -> Iterator[Selected | Piece | Result]:
    """Yield ``Selected`` (gemfilter only), then ``Piece``s of the answer, then one ``Result``.

    ``ttft_s`` runs from the call (prompt building included) to the first answer token.
    """
    t0 = time.perf_counter()
    prompt = prepare(model, tokenizer, document, question, cfg)
    device = next(model.parameters()).device
    pieces: list[str] = []
    ttft = None
    n_new = 0
    with PeakMemory(device) as mem:
        if cfg.method == "gemfilter":
            chosen = select_tokens(model, prompt, cfg)
            ids = prompt.ids[chosen.indices]
            yield chosen
        else:
            ids = prompt.ids
        tokens = generate_ids(
            model,
            ids,
            cfg.max_new_tokens,
            temperature=cfg.temperature,
            stop=stop_ids(model, tokenizer),
            seed=cfg.seed,
        )
        for piece, _ in stream_text(tokenizer, tokens):
            n_new += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
            if piece:
                pieces.append(piece)
                yield Piece(piece)
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
    )


def answer_text(model, tokenizer, document: str, question: str, cfg: QAConfig) -> Result:
    """Run :func:`run_qa` to the end and return its Result (benchmarks, tests)."""
    for event in run_qa(model, tokenizer, document, question, cfg):
        if isinstance(event, Result):
            return event
    raise RuntimeError("run_qa ended without a result")
