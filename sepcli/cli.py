"""The `sepcli` command line. Each command lives in sepcli/commands/; this file only wires them."""

from __future__ import annotations

from typing import Annotated

import typer

from sepcli import __version__
from sepcli.commands import (
    ask,
    calibrate,
    chat,
    gemfilter_cmd,
    generate,
    info,
    score,
    serve,
    stream,
)

app = typer.Typer(
    name="sepcli",
    help="Long-context work with local LLMs: SepLLM streaming perplexity and GemFilter document QA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sepcli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """sepcli: texts far longer than the model's context window."""


for _module in (info, score, stream, generate, chat, serve, ask, gemfilter_cmd, calibrate):
    _module.register(app)
