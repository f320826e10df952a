"""`--show`: the document on stderr with the tokens GemFilter kept highlighted, long stretches
with nothing kept elided to one line that says how many tokens they hold."""

from __future__ import annotations

from rich.text import Text

from sepcli.cli_common import err_console
from sepcli.gemfilter.selection import Selected

SHOW_CONTEXT = 16  # --show: document tokens printed either side of each kept run
SHOW_MIN_GAP = 48  # --show: a shorter stretch between shown parts is printed, not elided
SHOW_OPEN, SHOW_CLOSE = "⟦", "⟧"  # --show without colour: around each kept run


def shown_ranges(kept: list[int], n: int, context: int, min_gap: int) -> list[tuple[int, int]]:
    """Token ranges [start, end) of an ``n``-token document that ``--show`` prints: every kept
    token (sorted ``kept``) with ``context`` tokens either side; stretches of fewer than
    ``min_gap`` tokens between them (or at either end) are printed too, longer ones elided."""
    ranges: list[tuple[int, int]] = []
    for i in kept:
        s, e = max(0, i - context), min(n, i + 1 + context)
        if ranges and s - ranges[-1][1] < min_gap:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], e))
        else:
            ranges.append((s, e))
    if ranges and ranges[0][0] < min_gap:
        ranges[0] = (0, ranges[0][1])
    if ranges and n - ranges[-1][1] < min_gap:
        ranges[-1] = (ranges[-1][0], n)
    return ranges


def show_selection(chosen: Selected) -> None:
    """Render the document to stderr with the selected tokens highlighted; long stretches with
    nothing selected are elided to one line that says how many tokens they hold."""
    prompt = chosen.prompt
    kept = [i - prompt.doc_start for i in chosen.document_indices()]
    keep = set(kept)
    doc, offsets, n_doc = prompt.document, prompt.doc_offsets, prompt.doc_len
    # Without colour (stderr to a file or pipe, NO_COLOR) the highlight would vanish: kept runs
    # are bracketed instead.
    coloured = err_console.color_system and not err_console.no_color
    opening, closing = ("", "") if coloured else (SHOW_OPEN, SHOW_CLOSE)
    text = Text()
    last_tok = 0
    for start, end in shown_ranges(kept, n_doc, SHOW_CONTEXT, SHOW_MIN_GAP):
        if start > last_tok:
            lead = "\n" if start > 0 else ""
            text.append(f"{lead}[... {start - last_tok} tokens ...]\n", style="italic cyan")
        last = offsets[start][0]
        for i in range(start, end):
            s, e = offsets[i]
            if s > last:
                text.append(doc[last:s], style="dim")
            if i in keep:
                first, final = i - 1 not in keep or i == start, i + 1 not in keep
                piece = (opening if first else "") + doc[s:e] + (closing if final else "")
                text.append(piece, style="bold black on yellow")
            else:
                text.append(doc[s:e], style="dim")
            last = max(last, e)
        if end == n_doc:
            text.append(doc[last:], style="dim")
        last_tok = end
    if last_tok < n_doc:
        text.append(f"\n[... {n_doc - last_tok} tokens ...]", style="italic cyan")
    err_console.rule(f"selected {len(kept)} of {n_doc} document tokens (layer {chosen.layer})")
    err_console.print(text)
    err_console.rule()
