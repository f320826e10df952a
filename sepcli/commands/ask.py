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
    ThreadsOpt,
    guarded,
    warn_ignored,
)
from sepcli.commands.qa_options import (
    DocArg,
    LayerOpt,
    OptionalQuestionArg,
    ProtectOpt,
    SegmentOpt,
    SmoothOpt,
    SplitOpt,
    TopkOpt,
    UnitOpt,
    WindowOpt,
    qa_config,
    setup,
)
from sepcli.commands.questions import (
    DocCacheOpt,
    QuestionsOpt,
    RebuildOpt,
    open_session,
    reading_fields,
)
from sepcli.errors import ConfigError
from sepcli.gemfilter.config import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SMOOTH,
    DEFAULT_TOPK,
    DEFAULT_UNIT,
)

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
    "doc_cache",
    "rebuild",
)


@guarded
def ask(
    ctx: typer.Context,
    doc: DocArg,
    question: OptionalQuestionArg = None,
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
    questions: QuestionsOpt = None,
    doc_cache: DocCacheOpt = None,
    rebuild: RebuildOpt = False,
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
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION about DOC. GemFilter reads DOC with the early layers only, keeps the top-k
    tokens the question points at, and answers from those; --method full reads everything.
    Many questions (--questions, or no QUESTION on a terminal: an interactive prompt) share one
    reading of DOC."""
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
    interactive = check_question_sources(doc, question, questions)
    if question is not None and doc_cache is None:
        lm, prompt, cfg, question = setup(doc, question, model, device, dtype, threads, cfg)
        answer(lm, prompt, question, cfg, None, show, json_out)
        return
    run = open_session(
        doc, question, questions, doc_cache, rebuild, (model, device, dtype, threads), cfg
    )
    if interactive:
        from sepcli.commands import ask_prompt

        ask_prompt.run(run.lm, run.doc, run.cfg, run.reading, show)
        return
    many = questions is not None
    for prompt, (_, q) in zip(run.prompts, run.asked, strict=True):
        answer(run.lm, prompt, q, run.cfg, run.reading, show, json_out or many, many)


def on_terminal() -> bool:
    return sys.stdin.isatty()


def check_question_sources(doc: str, question: str | None, questions: str | None) -> bool:
    """Whether to open the interactive prompt: no QUESTION and no --questions, on a terminal."""
    if question is not None and questions is not None:
        raise ConfigError("give either QUESTION or --questions FILE, not both")
    if question is not None or questions is not None:
        return False
    if doc == "-" or not on_terminal():
        raise ConfigError(
            "no question: give QUESTION or --questions FILE (or run `sepcli ask DOC` on a "
            "terminal to ask interactively)"
        )
    return True


def answer(lm, prompt, question, cfg, reading, show: bool, json_out: bool, named=False) -> None:
    """Run one question and render it: streamed text, or one JSON object (``named``: with the
    question and what the shared reading did, as --questions prints)."""
    from sepcli.commands.show import show_selection
    from sepcli.gemfilter.pipeline import AnswerText, Result, run_qa
    from sepcli.gemfilter.selection import Selected

    reused = False
    for event in run_qa(lm.model, lm.tokenizer, prompt.document, question, cfg, prompt, reading):
        if isinstance(event, Selected):
            reused = event.reused
            if show:
                show_selection(event)
        elif isinstance(event, AnswerText) and not json_out:
            typer.echo(event.text, nl=False)
            sys.stdout.flush()
        elif isinstance(event, Result):
            if not json_out:
                typer.echo("")
                continue
            out = {"question": question} if named else {}
            out.update(event.as_dict())
            out["model"] = lm.name
            out["config"] = cfg.as_dict()
            if named:
                out.update(reading_fields(reading, reused))
            typer.echo(json.dumps(out))
            sys.stdout.flush()


def register(app: typer.Typer) -> None:
    # short_help: one line in `sepcli --help` (the docstring is wrapped for the source)
    app.command(
        "ask",
        short_help="Answer a question about a document, reading the top-k tokens GemFilter picks.",
    )(ask)
