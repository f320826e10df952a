"""The interactive `chat` prompt: a small loop over a line reader, slash-commands in one table.

Python's ``readline`` (when the platform has it) gives line editing and history. Ctrl-C while a
reply is being written stops the reply and keeps the session; Ctrl-C at the prompt clears the
line; Ctrl-D (or /exit) ends the session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from sepcli.cli_common import err_console, error_line
from sepcli.commands.interrupt import StopFlag
from sepcli.errors import SepcliError
from sepcli.generate.chat import ChatSession

PROMPT = ">>> "


def _help(repl: Repl, arg: str) -> None:
    for name, (_, text) in COMMANDS.items():
        err_console.print(f"  {name:<12} {text}")
    err_console.print("  Ctrl-C stops a reply, Ctrl-D ends the session.")


def _stats(repl: Repl, arg: str) -> None:
    err_console.print(repl.describe(repl.session.stats()))


def _reset(repl: Repl, arg: str) -> None:
    repl.session.reset()
    err_console.print("[dim]conversation cleared: an empty cache, turn 1 next[/]")


def _save(repl: Repl, arg: str) -> None:
    if not arg:
        err_console.print("[red]usage:[/] /save PATH")
        return
    repl.save(arg)
    err_console.print(f"[dim]session saved to {arg} (continue it with --resume {arg})[/]")


def _exit(repl: Repl, arg: str) -> None:
    repl.done = True


# name -> (handler, help line)
COMMANDS: dict[str, tuple[Callable[[Repl, str], None], str]] = {
    "/help": (_help, "this list"),
    "/stats": (_stats, "turns, tokens, cache slots, speed"),
    "/reset": (_reset, "forget the conversation"),
    "/save": (_save, "PATH: save the session (resume it with --resume PATH)"),
    "/exit": (_exit, "end the session (as Ctrl-D)"),
}


class Repl:
    """Runs ``session`` turn after turn from the terminal. ``save(path)`` writes a checkpoint;
    ``describe(stats)`` formats /stats and the summary."""

    def __init__(self, session: ChatSession, save: Callable[[str], None], describe):
        self.session, self.save, self.describe = session, save, describe
        self.done = False

    def run(self) -> None:
        try:
            import readline  # noqa: F401 - importing it turns on line editing for input()
        except ImportError:
            pass
        err_console.print("[dim]/help for commands · Ctrl-C stops a reply · Ctrl-D ends[/]")
        while not self.done:
            try:
                line = input(PROMPT)
            except EOFError:
                sys.stdout.write("\n")
                return
            except KeyboardInterrupt:
                sys.stdout.write("\n")
                continue
            if not line.strip():
                continue
            if line.startswith("/"):
                self.command(line)
            else:
                self.reply(line)

    def command(self, line: str) -> None:
        name, _, arg = line.strip().partition(" ")
        entry = COMMANDS.get(name)
        if entry is None:
            err_console.print(f"[red]unknown command {name}[/] (/help lists them)")
            return
        try:
            entry[0](self, arg.strip())
        except SepcliError as exc:
            error_line(exc)

    def reply(self, line: str) -> None:
        try:
            with StopFlag() as stop:
                for tok in self.session.send(line):
                    sys.stdout.write(tok.text)
                    sys.stdout.flush()
                    if stop.requested:
                        break
        except SepcliError as exc:  # e.g. --method full at the context limit: the session stays
            error_line(exc)
            return
        sys.stdout.write("\n")
        turn = self.session.turns[-1]
        if turn.stop_reason == "interrupt":
            err_console.print("[dim](reply stopped)[/]")
        elif turn.stop_reason == "repeat":
            err_console.print("[dim](reply stopped: it began to repeat itself; --stop-repeats)[/]")
