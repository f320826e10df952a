"""`sepcli info`: what the model is, and what the engine will use of it."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    guarded,
    load,
    out_console,
)
from sepcli.models import describe


@guarded
def info(
    model: ModelOpt = MODEL_DEFAULT,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the model's architecture, context, RoPE, device, dtype, load time and separator ids."""
    facts = describe(load(model, device, dtype, threads))
    if json_out:
        typer.echo(json.dumps(facts))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, value in facts.items():
        if key == "separator_token_ids":
            shown = f"{len(value)} ids: {', '.join(map(str, value[:24]))}{' ...' if len(value) > 24 else ''}"
            table.add_row(key, shown)
        else:
            table.add_row(key, str(value))
    out_console.print(table)


def register(app: typer.Typer) -> None:
    app.command("info")(info)
