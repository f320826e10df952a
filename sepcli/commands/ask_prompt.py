"""`sepcli ask DOC` on a terminal without a question: read the document once, then answer
question after question (readline history; Ctrl-C cancels an answer, Ctrl-D ends)."""

from __future__ import annotations

import sys

import typer

from sepcli.cli_common import err_console, error_line
from sepcli.commands.qa_options import clean_question
from sepcli.commands.show import show_selection
from sepcli.errors import SepcliError
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.pipeline import AnswerText, Result, prepare, run_qa
from sepcli.gemfilter.prompt import DocumentTokens
from sepcli.gemfilter.reading import DocumentReading

PROMPT = "question> "


def _line_editing() -> None:
    try:
        import readline  # noqa: F401 - importing it gives input() history and editing
    except ImportError:  # not on every platform; plain input() still works
        pass


def run(
    lm, doc: DocumentTokens, cfg: QAConfig, reading: DocumentReading | None, show: bool
) -> None:
    _line_editing()
    err_console.print("[dim]ask about the document; Ctrl-C cancels an answer, Ctrl-D ends[/]")
    while True:
        try:
            question = input(PROMPT)
        except EOFError:
            err_console.print()
            return
        except KeyboardInterrupt:
            err_console.print()
            continue
        if not question.strip():
            continue
        try:
            _answer(lm, doc, cfg, reading, clean_question(question)[0], show)
        except KeyboardInterrupt:
            err_console.print(" [yellow](cancelled)[/]")
        except SepcliError as exc:  # a question that does not fit, say: the next one may
            error_line(exc)


def _answer(lm, doc, cfg, reading, question: str, show: bool) -> None:
    prompt = prepare(lm.model, lm.tokenizer, doc.text, question, cfg, doc)
    for event in run_qa(lm.model, lm.tokenizer, doc.text, question, cfg, prompt, reading):
        if isinstance(event, AnswerText):
            typer.echo(event.text, nl=False)
            sys.stdout.flush()
        elif isinstance(event, Result):
            typer.echo("")
            err_console.print(
                f"[dim]({event.ttft_s or 0:.2f} s to first token, {event.total_s:.2f} s, "
                f"{event.selected_tokens} tokens read)[/]"
            )
        elif show:
            show_selection(event)
