"""What `sepcli ask` and `sepcli gemfilter` share: the GemFilter options (each one
:class:`~sepcli.gemfilter.config.QAConfig` field, which parses their spellings), and the checks
and stderr lines of a run (the question, the document, the layer, the segments).

Filter layers are numbered from 0 (the module index; the paper's "13 of 32" is 13).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer

from sepcli.cli_common import err_console, warn
from sepcli.errors import InputError
from sepcli.gemfilter.config import QAConfig
from sepcli.stream.reader import check_text_file, read_text

if TYPE_CHECKING:  # the options are parsed before torch loads
    from sepcli.gemfilter.prompt import Prompt

DocArg = Annotated[
    str,
    typer.Argument(
        help="Document file (UTF-8 text), or - to read stdin.", metavar="DOC", show_default=False
    ),
]
QuestionArg = Annotated[
    str,
    typer.Argument(
        help="The question (asked after the document).", metavar="QUESTION", show_default=False
    ),
]
OptionalQuestionArg = Annotated[
    str | None,
    typer.Argument(
        help="The question (asked after the document). Without it (and without --questions), "
        "on a terminal: an interactive prompt.",
        metavar="[QUESTION]",
        show_default=False,
    ),
]
LayerOpt = Annotated[
    str,
    typer.Option(
        "--layer",
        help="Filter layer, 0-based (0 = first decoder layer), or 'auto': the layer stored by "
        "`sepcli calibrate` for this model, else round(0.4 x layers).",
    ),
]
FilterTopkOpt = Annotated[
    int,
    typer.Option(
        "--topk",
        "-k",
        help="How many document tokens the filter keeps (the k that score highest at the "
        "filter layer).",
    ),
]
# --top-k is sampling's option in generate, chat and serve. ask, gemfilter and calibrate took
# it for --topk too: it still works there, unlisted (:func:`filter_topk`).
TopkAliasOpt = Annotated[int | None, typer.Option("--top-k", hidden=True)]
SmoothOpt = Annotated[
    int, typer.Option("--smooth", help="Odd moving-average width over scores (1 = off).")
]
QueryWindowOpt = Annotated[
    str,
    typer.Option(
        "--window",
        help="Whose queries score the document: 'question' (every token after the document), "
        "'last' (the last token only, as in the paper), or a number of final prompt tokens.",
    ),
]
ProtectOpt = Annotated[
    bool,
    typer.Option(
        "--protect/--no-protect", help="Always keep the question and chat-template tokens."
    ),
]
SplitOpt = Annotated[
    bool,
    typer.Option(
        "--split/--no-split",
        help="A document longer than the model's context is filtered in segments that fit, "
        "each followed by the question, and the top-k is taken over all of them; --no-split "
        "refuses it.",
    ),
]
SegmentOpt = Annotated[
    int,
    typer.Option(
        "--segment-tokens",
        help="At most this many document tokens per filter pass (0 = as many as fit in the "
        "context); a longer document is split even when it would fit.",
    ),
]
UnitOpt = Annotated[
    str,
    typer.Option(
        "--unit",
        help="What top-k keeps: 'token' (the paper: the k best tokens) or 'sentence' (whole "
        "sentences, best first, up to k document tokens).",
    ),
]


def filter_topk(topk: int, alias: int | None) -> int:
    """--topk, or the unlisted --top-k when that was given."""
    return topk if alias is None else alias


def clean_question(question: str) -> tuple[str, int]:
    """The question with undecodable bytes as U+FFFD, and how many were replaced.

    Python hands argv bytes that are not UTF-8 over as lone surrogates ('\\udcff'), which
    tokenizers cannot encode; documents get the same replacement when they are read."""
    return re.subn("[\ud800-\udfff]", "\ufffd", question)


def check_question(question: str) -> str:
    """The question ready to tokenize: InputError when blank; undecodable bytes replaced (warned)."""
    if not question.strip():
        raise InputError("the question is empty")
    question, replaced = clean_question(question)
    if replaced:
        warn(f"{replaced} undecodable byte(s) in the question replaced with U+FFFD")
    return question


def check_files(doc: str, questions: str | None) -> None:
    """The reader rule on DOC and the --questions file, before torch and the model load."""
    check_text_file(doc)
    if questions is not None:
        check_text_file(questions)


def read_document(doc: str) -> str:
    """DOC's text (:func:`reader.read_text`), warning when bytes were replaced."""
    document, replaced = read_text(doc)
    if replaced:
        warn(f"{replaced} undecodable byte sequence(s) in the document replaced with U+FFFD")
    return document


def resolve_layer(lm, cfg: QAConfig) -> tuple[QAConfig, str]:
    """``cfg`` with ``--layer auto`` resolved, and where the layer came from."""
    if cfg.method != "gemfilter" or cfg.layer is not None:
        return cfg, "given"
    from sepcli.gemfilter import calibrate as cal

    layer, origin = cal.auto_layer(lm.model, lm.name, lm.source)
    return QAConfig(**{**cfg.as_dict(), "layer": layer}), origin


def show_filter_settings(lm, cfg: QAConfig, origin: str) -> None:
    err_console.print(
        f"[dim]{lm.name} ({lm.device}, {lm.dtype_name}): gemfilter layer "
        f"{cfg.layer} ({origin}, 0-based of {lm.model.config.num_hidden_layers}), topk {cfg.topk} "
        f"({cfg.unit}s)[/]"
    )


def show_segments(lm, prompt: Prompt, cfg: QAConfig) -> None:
    """One stderr line when the document is filtered in several segments, saying why."""
    from sepcli.gemfilter.pipeline import segments_for

    segments = len(segments_for(lm.model, prompt, cfg.segment_tokens))
    if segments > 1:
        ctx = lm.model.config.max_position_embeddings
        why = (
            f"the prompt is {prompt.n} tokens, over the model's context of {ctx}"
            if prompt.n > ctx
            else f"the document is {prompt.doc_len} tokens, over "
            f"--segment-tokens {cfg.segment_tokens}"
        )
        err_console.print(f"[dim]{why}: filtering the document in {segments} segments[/]")
