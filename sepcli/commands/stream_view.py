"""How `sepcli stream` shows a run: JSON lines when piped (or --json), a live table on a terminal.

Both take ``progress(snapshot)`` as often as the loop likes and show at most one per interval,
then ``summary(summary)`` once.
"""

from __future__ import annotations

import json

import typer
from rich.live import Live
from rich.table import Table

from sepcli.cli_common import Throttle, out_console


class JsonLines:
    """One JSON object per report interval on stdout, then the summary line."""

    def __init__(self, interval: float):
        self._due = Throttle(interval, start_due=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def progress(self, snap: dict, force: bool = False) -> None:
        if self._due(force):
            typer.echo(json.dumps({"event": "progress", **snap}))

    def summary(self, summary: dict) -> None:
        typer.echo(json.dumps(summary))


class LiveView:
    """A rich table refreshed in place on the terminal."""

    def __init__(self, interval: float):
        self._due = Throttle(min(interval, 0.25))
        self.live = Live(
            _table({"tokens": 0}), console=out_console, refresh_per_second=4, transient=False
        )

    def __enter__(self):
        self.live.__enter__()
        return self

    def __exit__(self, *exc):
        self.live.__exit__(*exc)
        return False

    def progress(self, snap: dict, force: bool = False) -> None:
        if self._due(force):
            self.live.update(_table(snap))

    def summary(self, summary: dict) -> None:
        self.live.update(_table(summary, title="summary"))


def _table(snap: dict, title: str = "streaming") -> Table:
    table = Table(title=title, show_header=False, box=None, pad_edge=False, title_justify="left")
    cache = f"{snap.get('cache_used', 0)} / {snap.get('cache_capacity', '?')}"

    def fmt(x, digits: int = 3):
        return "-" if x is None else f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"

    table.add_row("tokens", fmt(snap.get("tokens", 0)))
    table.add_row("perplexity", fmt(snap.get("ppl")))
    table.add_row("recent perplexity", fmt(snap.get("recent_ppl")))
    table.add_row("tokens/s", fmt(snap.get("tok_per_s"), 1))
    table.add_row("cache slots", cache)
    table.add_row("memory (RSS MiB)", fmt(snap.get("rss_mb"), 0))
    table.add_row("elapsed s", fmt(snap.get("elapsed_s"), 1))
    if snap.get("done_pct") is not None:
        eta = snap.get("eta_s")
        left = "-" if eta is None else f"{eta // 3600:d}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        table.add_row("done", f"{snap['done_pct']:.1f} % · ETA {left}")
    return table
