"""The `sepcli` command line. Each command lives in sepcli/commands/; this file only wires them.

A command's module is imported only when that command runs (or shows its help): `sepcli
--help`, `--version` and a mistyped command answer at once, without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import click
import typer
import typer.main
from typer.core import TyperGroup

from sepcli import __version__

# name -> (module in sepcli/commands/, the one line `sepcli --help` shows for it; a test checks
# it against the command's own help)
COMMANDS = {
    "info": (
        "info",
        "Show the model's architecture, context, RoPE, device, dtype, load time and separator ids.",
    ),
    "score": (
        "score",
        "Perplexity of every document of a corpus, scored whole (long ones through the ring).",
    ),
    "stream": (
        "stream",
        "Stream a text of any length through the model with a fixed KV cache; report perplexity.",
    ),
    "generate": (
        "generate",
        "Generate text after a prompt of any length, on a fixed-size KV cache (endless with -n 0).",
    ),
    "chat": (
        "chat",
        "Chat with the model; every turn flows into one fixed-size KV cache, never re-encoded.",
    ),
    "serve": (
        "serve",
        "Serve the model over an OpenAI-compatible API; conversations are never re-encoded.",
    ),
    "ask": (
        "ask",
        "Answer a question about a document, reading the top-k tokens GemFilter picks.",
    ),
    "gemfilter": (
        "gemfilter_cmd",
        "Print only the document text GemFilter keeps for a question (to shrink a file for "
        "another tool).",
    ),
    "calibrate": (
        "calibrate",
        "Find and store the best GemFilter layer for a model (needle-in-a-haystack over the "
        "essays).",
    ),
}


def load_command(name: str) -> click.Command:
    """The click command of ``name``, built from its module's ``register(app)``."""
    module = importlib.import_module(f"sepcli.commands.{COMMANDS[name][0]}")
    single = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    module.register(single)
    info = next(c for c in single.registered_commands if c.name == name)
    return typer.main.get_command_from_info(
        info,
        pretty_exceptions_short=single.pretty_exceptions_short,
        rich_markup_mode=single.rich_markup_mode,
    )


class LazyCommands(TyperGroup):
    """The root group: lists the commands from :data:`COMMANDS`, imports one only to run it."""

    _listing = False  # while the root help is drawn: placeholders with the one-line help

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        if self._listing:
            return click.Command(name, help=COMMANDS[name][1])
        return load_command(name)

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False


app = typer.Typer(
    name="sepcli",
    cls=LazyCommands,
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
