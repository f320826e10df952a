"""What every command shares: option types, the error guard, and the stderr console.

The CLI owns the terminal: answers and data go to stdout, everything else to stderr.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from sepcli.errors import SepcliError

if TYPE_CHECKING:  # the commands import this module for their options: no torch until a run
    from sepcli.models import LoadedModel

# soft_wrap: a status line piped to a file or a log stays one line (rich wraps at 80 columns
# when stderr is not a terminal).
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
# Tables and live views that are the command's output (data goes to stdout).
out_console = Console(highlight=False)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="'smollm2' (embedded SmolLM2-135M-Instruct), a HF model id, a local folder, or a .gguf file.",
    ),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto | gguf | bf16 | fp16 | fp32 | int8 (gguf: CPU only, a .gguf file's own "
        "quantized blocks, auto's choice for one where the fast C kernels run; int8: CPU only; "
        "int8 weights and activations in the linear layers, fp32 elsewhere).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", help="CPU threads for torch (default: the physical cores)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]

# sepcli.models.DEFAULT_MODEL, spelled here so that option parsing does not import torch (a
# test checks that the two agree)
MODEL_DEFAULT = "smollm2"


def load(model: str, device: str, dtype: str, threads: int | None = None) -> LoadedModel:
    """Load the model for a command on ``threads`` CPU threads (None: the physical cores), with
    a spinner on stderr while it loads."""
    from sepcli.models import load_model
    from sepcli.runtime import set_threads

    set_threads(threads)
    with err_console.status(f"loading {model} ..."):
        return load_model(model, device=device, dtype=dtype)


class Throttle:
    """``due(force=False)`` is True at most once per ``interval`` seconds (progress reports);
    ``start_due``: the first call is due at once, else only after one interval."""

    def __init__(self, interval: float, start_due: bool = True):
        self.interval = interval
        self._last = float("-inf") if start_due else time.perf_counter()

    def __call__(self, force: bool = False) -> bool:
        now = time.perf_counter()
        if force or now - self._last >= self.interval:
            self._last = now
            return True
        return False


def run_info(lm: LoadedModel) -> dict:
    """What a run's JSON records about the model it ran: name, device, dtype."""
    return {"model": lm.name, "device": str(lm.device), "dtype": lm.dtype_name}


def show_config(command: str, fields: dict, extra: str = "") -> None:
    """The resolved configuration of a run, one dim line on stderr (empty values left out)."""
    items = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, [], ()))
    err_console.print(f"[dim]{command}: {items}{extra}[/]")


def warn_ignored(ctx: typer.Context, names: Iterable[str], why: str) -> None:
    """A stderr warning for each parameter in ``names`` given on the command line, which the
    chosen mode does not read (``why`` says which mode, e.g. "with --method full")."""
    flags = {param.name: param.opts[0] for param in ctx.command.params}
    for name in names:
        source = ctx.get_parameter_source(name)
        if source is not None and source.name == "COMMANDLINE":
            warn(f"{flags[name]} has no effect {why}")


def warn(message: str) -> None:
    """Print a one-line warning to stderr (the run goes on)."""
    err_console.print(f"[yellow]warning:[/] {message}")


def error_line(message) -> None:
    """Print a one-line error to stderr (an interactive loop then goes on)."""
    first = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {first}", markup=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print a one-line error to stderr and return the Exit to raise."""
    error_line(message)
    return typer.Exit(code)


def guarded(fn):
    """Turn domain errors into one-line messages and exit codes; never show a traceback.

    SepcliError -> its exit_code (2); Ctrl-C -> 130; anything else -> 1 with a one-line
    message (SEPCLI_DEBUG=1 re-raises for a traceback).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except SepcliError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted", 130) from None
        except BrokenPipeError:
            # Downstream of a pipe closed early (e.g. `| head`): not an error of ours.
            _silence_stdout()
            raise typer.Exit(0) from None
        except Exception as exc:  # noqa: BLE001 - the last line of defence for the user
            if os.environ.get("SEPCLI_DEBUG") == "1":
                raise
            raise fail(
                f"internal error: {type(exc).__name__}: {exc} (SEPCLI_DEBUG=1 for a traceback)", 1
            ) from None

    return wrapper


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
