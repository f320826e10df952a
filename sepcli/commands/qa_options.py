"""What `sepcli ask` and `sepcli gemfilter` share: the GemFilter options, their parsers, the one
:class:`QAConfig` builder, and the set-up of a run (read the document, load, resolve the layer,
build the prompt, say what will run on stderr).

Filter layers are numbered from 0 (the module index; the paper's "13 of 32" is 13).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

import typer

from sepcli.cli_common import dtype_name, err_console, load, warn
from sepcli.errors import ConfigError, InputError
from sepcli.gemfilter.config import QAConfig
from sepcli.stream.reader import read_text

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
TopkOpt = Annotated[
    int,
    typer.Option(
        "--topk",
        "--top-k",
        "-k",
        help="How many document tokens the filter keeps (the k that score highest at the "
        "filter layer).",
    ),
]
SmoothOpt = Annotated[
    int, typer.Option("--smooth", help="Odd moving-average width over scores (1 = off).")
]
WindowOpt = Annotated[
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


def clean_question(question: str) -> tuple[str, int]:
    """The question with undecodable bytes as U+FFFD, and how many were replaced.

    Python hands argv bytes that are not UTF-8 over as lone surrogates ('\\udcff'), which
    tokenizers cannot encode; documents get the same replacement when they are read."""
    return re.subn("[\ud800-\udfff]", "\ufffd", question)


def segment_cap(segment_tokens: int) -> int | None:
    """--segment-tokens: 0 -> None (as many as fit), else the positive cap."""
    if segment_tokens < 0:
        raise ConfigError(
            f"--segment-tokens must be >= 0 (0 = as many as fit), got {segment_tokens}"
        )
    return segment_tokens or None


def parse_layer(layer: str) -> int | None:
    """'auto' -> None, else a non-negative int (ConfigError otherwise)."""
    if layer.strip().lower() == "auto":
        return None
    try:
        value = int(layer)
    except ValueError:
        raise ConfigError(
            f"--layer must be 'auto' or a 0-based layer number, got {layer!r}"
        ) from None
    if value < 0:
        raise ConfigError(f"--layer must be >= 0 (0-based) or 'auto', got {value}")
    return value


def parse_window(window: str) -> int | None:
    """'question' -> None, 'last' -> 1, else a positive int (ConfigError otherwise)."""
    w = window.strip().lower()
    if w == "question":
        return None
    if w == "last":
        return 1
    try:
        value = int(w)
    except ValueError:
        raise ConfigError(
            f"--window must be 'question', 'last' or a number, got {window!r}"
        ) from None
    if value < 1:
        raise ConfigError(f"--window must be >= 1, got {value}")
    return value


def qa_config(
    *,
    layer: str,
    topk: int,
    smooth: int,
    window: str,
    split: bool,
    segment_tokens: int,
    unit: str,
    **decoding,
) -> QAConfig:
    """The run's QAConfig from the command-line spellings of the GemFilter options; ``decoding``
    holds the fields only `ask` has (method, protect, max_new_tokens, temperature, seed)."""
    return QAConfig(
        layer=parse_layer(layer),
        topk=topk,
        smooth=smooth,
        window=parse_window(window),
        split=split,
        segment_tokens=segment_cap(segment_tokens),
        unit=unit.strip().lower(),
        **decoding,
    )


def check_question(question: str) -> str:
    """The question ready to tokenize: InputError when blank; undecodable bytes replaced (warned)."""
    if not question.strip():
        raise InputError("the question is empty")
    question, replaced = clean_question(question)
    if replaced:
        warn(f"{replaced} undecodable byte(s) in the question replaced with U+FFFD")
    return question


def read_document(doc: str) -> str:
    """DOC's text (:func:`reader.read_text`), warning when bytes were replaced."""
    document, replaced = read_text(doc)
    if replaced:
        warn(f"{replaced} undecodable byte sequence(s) in the document replaced with U+FFFD")
    return document


def setup(doc, question, model, device, dtype, threads, cfg: QAConfig):
    """Validate cheap inputs first, then load and check the prompt fits.

    Returns (lm, prompt, cfg with the layer resolved, the question as asked)."""
    from sepcli.gemfilter.pipeline import prepare

    question = check_question(question)
    document = read_document(doc)
    lm = load(model, device, dtype, threads)
    cfg, origin = resolve_layer(lm, cfg)
    prompt = prepare(lm.model, lm.tokenizer, document, question, cfg)
    if cfg.method == "gemfilter":
        show_filter_settings(lm, cfg, origin)
        show_segments(lm, prompt, cfg)
    return lm, prompt, cfg, question


def resolve_layer(lm, cfg: QAConfig) -> tuple[QAConfig, str]:
    """``cfg`` with ``--layer auto`` resolved, and where the layer came from."""
    if cfg.method != "gemfilter" or cfg.layer is not None:
        return cfg, "given"
    from sepcli.gemfilter import calibrate as cal

    layer, origin = cal.auto_layer(lm.model, lm.name, lm.source)
    return QAConfig(**{**cfg.as_dict(), "layer": layer}), origin


def show_filter_settings(lm, cfg: QAConfig, origin: str) -> None:
    err_console.print(
        f"[dim]{lm.name} ({lm.device}, {dtype_name(lm)}): gemfilter layer "
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
