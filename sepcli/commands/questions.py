"""Many questions about one document, for `sepcli ask` and `sepcli gemfilter`: the --questions
file, the --doc-cache options, and the document's reading (computed once, or loaded).

A run with several questions (or with --doc-cache, or the interactive prompt) reads the
document through the filter layers once (:mod:`sepcli.gemfilter.reading`) and answers every
question from that reading; each answer equals the one a separate run would give.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sepcli.cli_common import err_console, load, warn
from sepcli.commands.qa_options import (
    check_question,
    read_document,
    resolve_layer,
    show_filter_settings,
)
from sepcli.errors import ConfigError, InputError, SepcliError
from sepcli.gemfilter.config import QAConfig
from sepcli.stream.reader import read_text

if TYPE_CHECKING:  # the options are parsed before torch loads
    from sepcli.gemfilter.prompt import DocumentTokens, Prompt
    from sepcli.gemfilter.reading import DocumentReading
    from sepcli.models import LoadedModel

QuestionsOpt = Annotated[
    str | None,
    typer.Option(
        "--questions",
        help="File of questions, one per line or JSON lines with a 'question' field (- = "
        "stdin); the document is read once and one JSON line is printed per question.",
        show_default=False,
    ),
]
DocCacheOpt = Annotated[
    str | None,
    typer.Option(
        "--doc-cache",
        help="Keep the document's filter-layer keys/values in this file: written on the first "
        "run, reused by later runs with the same document, model and settings.",
        show_default=False,
    ),
]
RebuildOpt = Annotated[
    bool,
    typer.Option("--rebuild", help="Rewrite a --doc-cache that does not match (or is damaged)."),
]


def read_questions(path: str, doc: str) -> list[tuple[int, str]]:
    """(line number, question) for each non-blank line of ``path``; blank lines are skipped
    and counted (a warning). A line starting with '{' is a JSON object with a 'question'."""
    if path == "-" and doc == "-":
        raise ConfigError("DOC and --questions cannot both be stdin (-)")
    text, _ = read_text(path)
    where = "stdin" if path == "-" else path
    out: list[tuple[int, str]] = []
    blank = 0
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            blank += 1
            continue
        question = line
        if line.lstrip().startswith("{"):
            try:
                question = json.loads(line)["question"]
            except (ValueError, KeyError, TypeError):
                raise InputError(
                    f"{where} line {n} is not a JSON object with a 'question' string"
                ) from None
            if not isinstance(question, str):
                raise InputError(f"{where} line {n}: 'question' must be a string")
        out.append((n, check_question(question)))
    if blank:
        warn(f"{blank} blank line(s) in {where} skipped")
    return out


@dataclass
class Session:
    """One document and its questions, ready to run: the loaded model, the resolved config,
    the document's tokens, (line, question) pairs and their prompts (all known to fit), and
    the shared reading (gemfilter only)."""

    lm: LoadedModel
    cfg: QAConfig
    doc: DocumentTokens
    asked: list[tuple[int, str]]
    prompts: list[Prompt]
    reading: DocumentReading | None


def open_session(
    doc: str,
    question: str | None,
    questions: str | None,
    cache: str | None,
    rebuild: bool,
    load_args: tuple[str, str, str],
    cfg: QAConfig,
) -> Session:
    """Check the cheap inputs (questions, --doc-cache path, the document), then load the model
    (``load_args``: model, device, dtype, threads), check every question fits, and read the document or
    load its reading."""
    from sepcli.gemfilter.prompt import encode_document

    asked = read_questions(questions, doc) if questions else []
    if question is not None:
        asked = [(0, check_question(question))]
    check_cache_path(cache, doc)
    document = read_document(doc)
    lm = load(*load_args)
    cfg, origin = resolve_layer(lm, cfg)
    tokens = encode_document(lm.tokenizer, document)
    prompts = prepare_all(lm, tokens, asked, cfg, "stdin" if questions == "-" else questions)
    reading = None
    if cfg.method == "gemfilter":
        show_filter_settings(lm, cfg, origin)
        reading = open_reading(lm, tokens, cfg, cache, rebuild)
    return Session(lm, cfg, tokens, asked, prompts, reading)


def prepare_all(lm, doc: DocumentTokens, questions, cfg: QAConfig, where: str) -> list[Prompt]:
    """Every question's prompt, built before any model work: a question that does not fit
    fails here, naming its line."""
    from sepcli.gemfilter.pipeline import prepare

    prompts = []
    for n, question in questions:
        try:
            prompts.append(prepare(lm.model, lm.tokenizer, doc.text, question, cfg, doc))
        except SepcliError as exc:
            if not n:  # the QUESTION argument: no line to name
                raise
            raise type(exc)(f"question on {where} line {n}: {exc}") from None
    return prompts


def check_cache_path(cache: str | None, doc_arg: str) -> None:
    """Refuse a --doc-cache that can never be used or written, before the model loads."""
    if cache is not None:
        from sepcli.gemfilter import doc_cache

        path = Path(cache).expanduser()
        doc_cache.check_target(path, doc_arg)
        doc_cache.probe(path)


def open_reading(
    lm, doc: DocumentTokens, cfg: QAConfig, cache: str | None, rebuild: bool
) -> DocumentReading:
    """The document's reading: from ``cache`` when it holds this one, else read now (and
    written to ``cache``; :func:`check_cache_path` first). Progress and timings on stderr."""
    from sepcli.gemfilter import doc_cache
    from sepcli.gemfilter.reading import identity, layout, make_reading

    path = Path(cache).expanduser() if cache else None
    if path is not None:
        if not rebuild:
            head, bounds = layout(lm.model, lm.tokenizer, doc, cfg)
            wanted = identity(lm.model, lm.name, doc, head, bounds, cfg)
            with err_console.status(f"loading {path} ..."):
                reading = doc_cache.load(path, wanted)
            if reading is not None:
                err_console.print(f"[dim]document reading loaded from {path}[/]")
                return reading
    with err_console.status("reading the document ...") as status:

        def progress(done: int, total: int) -> None:
            status.update(f"reading the document: segment {done}/{total}")

        reading = make_reading(lm.model, lm.name, lm.tokenizer, doc, cfg, progress)
    err_console.print(
        f"[dim]read the document ({len(doc.ids)} tokens, {len(reading.bounds)} segment(s)) "
        f"through layers 0..{cfg.layer} in {reading.seconds:.1f} s[/]"
    )
    if path is not None:
        with err_console.status(f"writing {path} ..."):
            doc_cache.save(path, reading)
        size = path.stat().st_size / 2**20
        err_console.print(f"[dim]document reading saved to {path} ({size:.1f} MiB)[/]")
    return reading


def reading_fields(reading: DocumentReading | None, reused: bool) -> dict:
    """What a question's JSON line says about the shared reading."""
    if reading is None:
        return {"reading": None}
    return {
        "reading": reading.source,
        "reading_s": round(reading.seconds, 4),
        "reading_reused": reused,
    }
