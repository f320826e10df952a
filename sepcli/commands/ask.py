"""`sepcli ask`: answer a question about a document (GemFilter or full attention).

The answer goes to stdout as it is produced (or one JSON object with --json); the filter
settings, --show and warnings go to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    guarded,
    warn_ignored,
)
from sepcli.commands.qa_options import (
    DocArg,
    LayerOpt,
    ProtectOpt,
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
from sepcli.gemfilter.config import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SMOOTH,
    DEFAULT_TOPK,
    DEFAULT_UNIT,
)
from sepcli.gemfilter.pipeline import AnswerText, Result, run_qa
from sepcli.gemfilter.selection import Selected

# What only the gemfilter method reads; --method full reads the whole document.
FILTER_OPTIONS = (
    "layer",
    "topk",
    "smooth",
    "window",
    "protect",
    "split",
    "segment_tokens",
    "unit",
    "show",
)


@guarded
def ask(
    ctx: typer.Context,
    doc: DocArg,
    question: QuestionArg,
    model: ModelOpt = MODEL_DEFAULT,
    method: Annotated[str, typer.Option("--method", help="gemfilter | full")] = "gemfilter",
    layer: LayerOpt = "auto",
    topk: TopkOpt = DEFAULT_TOPK,
    smooth: SmoothOpt = DEFAULT_SMOOTH,
    window: WindowOpt = "question",
    protect: ProtectOpt = True,
    split: SplitOpt = True,
    segment_tokens: SegmentOpt = 0,
    unit: UnitOpt = DEFAULT_UNIT,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Answer length limit.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (with --temperature).")] = 0,
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Show the document with selected tokens highlighted (stderr; long stretches "
            "with nothing selected are elided).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION about DOC. GemFilter reads DOC with the early layers only, keeps the top-k
    tokens the question points at, and answers from those; --method full reads everything."""
    cfg = qa_config(
        layer=layer,
        topk=topk,
        smooth=smooth,
        window=window,
        split=split,
        segment_tokens=segment_tokens,
        unit=unit,
        method=method,
        protect=protect,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    if cfg.method == "full":
        warn_ignored(ctx, FILTER_OPTIONS, "with --method full (it reads the whole document)")
    lm, prompt, cfg, question = setup(doc, question, model, device, dtype, cfg)
    for event in run_qa(lm.model, lm.tokenizer, prompt.document, question, cfg, prompt):
        if isinstance(event, Selected) and show:
            show_selection(event)
        elif isinstance(event, AnswerText) and not json_out:
            typer.echo(event.text, nl=False)
            sys.stdout.flush()
        elif isinstance(event, Result):
            if json_out:
                out = event.as_dict()
                out["model"] = lm.name
                out["config"] = cfg.as_dict()
                typer.echo(json.dumps(out))
            else:
                typer.echo("")


def register(app: typer.Typer) -> None:
    # short_help: one line in `sepcli --help` (the docstring is wrapped for the source)
    app.command(
        "ask",
        short_help="Answer a question about a document, reading the top-k tokens GemFilter picks.",
    )(ask)
