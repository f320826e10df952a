"""`sepcli calibrate`: find the best GemFilter layer for a model by measurement, and store it
for `--layer auto`. The table (or --json) goes to stdout, progress and the choice to stderr."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    err_console,
    guarded,
    load,
    out_console,
)
from sepcli.commands.qa_options import QueryWindowOpt, TopkAliasOpt, filter_topk
from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter.config import DEFAULT_WINDOW

DEFAULT_CALIBRATE = cal.CalibrateConfig()  # the defaults, defined once in the config


@guarded
def calibrate(
    model: ModelOpt = MODEL_DEFAULT,
    topk: Annotated[
        int, typer.Option("--topk", "-k", help="Top-k used to judge a layer.")
    ] = DEFAULT_CALIBRATE.topk,
    topk_alias: TopkAliasOpt = None,
    needles: Annotated[
        int, typer.Option("--needles", help="How many different needles (1-6).")
    ] = DEFAULT_CALIBRATE.needles,
    window: QueryWindowOpt = DEFAULT_WINDOW,
    judge: Annotated[
        str,
        typer.Option(
            "--judge",
            help="What counts as found: 'token' (half the needle's tokens in the top-k) or "
            "'sentence' (whole-sentence selection keeps all of the needle; it ties on most "
            "layers, docs/gemfilter.md). Not `ask`'s --unit: the chosen layer serves both units.",
        ),
    ] = DEFAULT_CALIBRATE.judge,
    unit: Annotated[str | None, typer.Option("--unit", hidden=True)] = None,  # --judge's old name
    lengths: Annotated[
        str | None,
        typer.Option(
            "--lengths",
            help="Comma-separated haystack lengths in tokens (default: 1/8, 1/4, 1/2 of the context).",
            show_default=False,
        ),
    ] = None,
    save: Annotated[
        bool, typer.Option("--save/--no-save", help="Store the choice for --layer auto.")
    ] = DEFAULT_CALIBRATE.save,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the best filter layer (0-based) for a model on a synthetic needle-in-a-haystack task
    over the bundled essays; print accuracy per layer and store the choice for --layer auto."""
    opts = cal.CalibrateConfig(
        topk=filter_topk(topk, topk_alias),
        needles=needles,
        window=window,
        judge=judge if unit is None else unit,
        lengths=lengths,
        save=save,
    )
    topk, unit = opts.topk, opts.judge
    lm = load(model, device, dtype, threads)
    ctx = lm.model.config.max_position_embeddings
    given = None if opts.lengths is None else list(opts.lengths)
    lens = cal.haystack_lengths(ctx, given, topk)
    cases = cal.calibration_cases(lm.tokenizer, ctx, lengths=lens, needles=opts.needles)
    curve = None
    with err_console.status("calibrating ...") as status:
        for ev in cal.measure(
            lm.model, lm.tokenizer, cases, topk=topk, window=opts.window, unit=unit
        ):
            if isinstance(ev, cal.Progress):
                status.update(f"calibrating: case {ev.done}/{ev.total}")
            else:
                curve = ev
    best = curve.best()
    path = cal.save(lm.name, lm.source, curve) if opts.save else None
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "model": lm.name,
                    "layer": best,
                    "layer_numbering": "0-based",
                    "topk": topk,
                    "unit": curve.unit,
                    "cases": curve.cases,
                    "accuracy": [curve.accuracy(r) for r in range(curve.layers)],
                    "recall": [curve.recall(r) for r in range(curve.layers)],
                    "stored_at": str(path) if path else None,
                }
            )
        )
        return
    found = "whole needle kept" if unit == "sentence" else "needle found"
    table = Table(title=f"{lm.name}: {found} in top-{topk} {unit}s ({curve.cases} cases)")
    table.add_column("layer", justify="right")
    table.add_column("accuracy", justify="right")
    table.add_column("recall", justify="right")
    for r in range(curve.layers):
        mark = " <- chosen" if r == best else ""
        table.add_row(str(r), f"{curve.accuracy(r):.2f}", f"{curve.recall(r):.2f}{mark}")
    out_console.print(table)
    where = f"; stored in {path}" if path else " (not stored: --no-save)"
    err_console.print(f"chosen filter layer: {best} (0-based){where}")


def register(app: typer.Typer) -> None:
    app.command(
        "calibrate",
        short_help="Find and store the best GemFilter layer for a model "
        "(needle-in-a-haystack over the essays).",
    )(calibrate)
