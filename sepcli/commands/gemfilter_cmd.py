"""`sepcli gemfilter`: print only the document text GemFilter keeps for a question.

The kept text goes to stdout (or indices and scores with --json); settings and --show to stderr.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

from sepcli.cli_common import MODEL_DEFAULT, DeviceOpt, DtypeOpt, JsonOpt, ModelOpt, guarded
from sepcli.commands.qa_options import (
    DocArg,
    LayerOpt,
    QuestionArg,
    SegmentOpt,
    SmoothOpt,
    SplitOpt,
    TopkOpt,
    UnitOpt,
    WindowOpt,
    qa_config,
    setup,
)
from sepcli.commands.show import show_selection
from sepcli.gemfilter.config import DEFAULT_SMOOTH, DEFAULT_TOPK, DEFAULT_UNIT
from sepcli.gemfilter.pipeline import filter_prompt
from sepcli.gemfilter.selection import kept_text


@guarded
def gemfilter(
    doc: DocArg,
    question: QuestionArg,
    model: ModelOpt = MODEL_DEFAULT,
    layer: LayerOpt = "auto",
    topk: TopkOpt = DEFAULT_TOPK,
    smooth: SmoothOpt = DEFAULT_SMOOTH,
    window: WindowOpt = "question",
    split: SplitOpt = True,
    segment_tokens: SegmentOpt = 0,
    unit: UnitOpt = DEFAULT_UNIT,
    gap: Annotated[
        str,
        typer.Option(
            "--gap",
            help="Text printed between non-adjacent selected runs (default: ' … ').",
            show_default=False,
        ),
    ] = " … ",
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Also show the highlighted document (stderr; unselected stretches elided).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Print only the document text GemFilter keeps for QUESTION (in order), e.g. to shrink a long
    file before giving it to another LLM. --json: indices (into the document's tokens) and scores."""
    cfg = qa_config(
        layer=layer,
        topk=topk,
        smooth=smooth,
        window=window,
        split=split,
        segment_tokens=segment_tokens,
        unit=unit,
    )
    lm, prompt, cfg, question = setup(doc, question, model, device, dtype, cfg)
    chosen = filter_prompt(lm.model, prompt, cfg)
    if show:
        show_selection(chosen)
    text = kept_text(chosen, lm.tokenizer, gap)
    if not json_out:
        typer.echo(text.strip())
        return
    doc_idx = chosen.document_indices()
    record = {
        "model": lm.name,
        "layer": cfg.layer,
        "topk": cfg.topk,
        "prompt_tokens": prompt.n,
        "document_tokens": prompt.doc_len,
        "segments": chosen.segments,
        "indices": [i - prompt.doc_start for i in doc_idx],
        "scores": [round(float(chosen.scores[i]), 6) for i in doc_idx],
        "text": text,
    }
    typer.echo(json.dumps(record))


def register(app: typer.Typer) -> None:
    app.command(
        "gemfilter",
        short_help="Print only the document text GemFilter keeps for a "
        "question (to shrink a file for another tool).",
    )(gemfilter)
