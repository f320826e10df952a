"""`sepcli ask`, `sepcli gemfilter`, `sepcli calibrate`: GemFilter document QA (thin CLI layer).

Answers and selected text go to stdout (streamed as produced); status, --show and tables to stderr.
Filter layers are numbered from 0 (the module index; the paper's "13 of 32" is 13).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    dtype_name,
    err_console,
    guarded,
    load,
    out_console,
    warn,
    warn_ignored,
)
from sepcli.errors import ConfigError, InputError
from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter.config import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SMOOTH,
    DEFAULT_TOPK,
    DEFAULT_UNIT,
    QAConfig,
    check_unit,
)
from sepcli.gemfilter.pipeline import (
    Piece,
    Result,
    Selected,
    prepare,
    run_qa,
    segments_for,
    select_tokens,
)
from sepcli.stream.reader import refuse_binary

DocArg = Annotated[
    str,
    typer.Argument(
        help="Document file (UTF-8 text), or - to read stdin.", metavar="DOC", show_default=False
    ),
]
QuestionArg = Annotated[
    str,
    typer.Argument(
        help="The question (asked after the document).", metavar="QUESTION", show_default=False
    ),
]
LayerOpt = Annotated[
    str,
    typer.Option(
        "--layer",
        help="Filter layer, 0-based (0 = first decoder layer), or 'auto': the layer stored by "
        "`sepcli calibrate` for this model, else round(0.4 x layers).",
    ),
]
TopkOpt = Annotated[
    int,
    typer.Option(
        "--topk",
        "--top-k",
        "-k",
        help="How many document tokens the filter keeps (the k that score highest at the "
        "filter layer).",
    ),
]
SmoothOpt = Annotated[
    int, typer.Option("--smooth", help="Odd moving-average width over scores (1 = off).")
]
WindowOpt = Annotated[
    str,
    typer.Option(
        "--window",
        help="Whose queries score the document: 'question' (every token after the document), "
        "'last' (the last token only, as in the paper), or a number of final prompt tokens.",
    ),
]
ProtectOpt = Annotated[
    bool,
    typer.Option(
        "--protect/--no-protect", help="Always keep the question and chat-template tokens."
    ),
]
SplitOpt = Annotated[
    bool,
    typer.Option(
        "--split/--no-split",
        help="A document longer than the model's context is filtered in segments that fit, "
        "each followed by the question, and the top-k is taken over all of them; --no-split "
        "refuses it.",
    ),
]
SegmentOpt = Annotated[
    int,
    typer.Option(
        "--segment-tokens",
        help="At most this many document tokens per filter pass (0 = as many as fit in the "
        "context); a longer document is split even when it would fit.",
    ),
]
UnitOpt = Annotated[
    str,
    typer.Option(
        "--unit",
        help="What top-k keeps: 'token' (the paper: the k best tokens) or 'sentence' (whole "
        "sentences, best first, up to k document tokens).",
    ),
]


def read_document(doc: str) -> tuple[str, int]:
    """Text of a file or of stdin ('-') and how many invalid UTF-8 bytes were replaced.

    InputError when missing, unreadable, binary (a NUL byte in the first 8 KiB) or empty.
    Other invalid bytes become U+FFFD, as in `sepcli stream`; the caller warns."""
    if doc == "-":
        data = (
            sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        )
        where = "stdin"
    else:
        path = Path(doc).expanduser()
        if not path.exists():
            raise InputError(f"no such document: {doc}")
        if path.is_dir():  # pipes and /dev/fd/N (`<(...)`) are read like files
            raise InputError(f"not a file: {doc}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read {doc}: {exc.strerror}") from exc
        where = doc
    refuse_binary(data, where)
    text = data.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - data.count("\ufffd".encode())  # not U+FFFD already there
    if not text.strip():
        raise InputError(f"the document ({where}) is empty")
    return text, replaced


def clean_question(question: str) -> tuple[str, int]:
    """The question with undecodable bytes as U+FFFD, and how many were replaced.

    Python hands argv bytes that are not UTF-8 over as lone surrogates ('\\udcff'), which
    tokenizers cannot encode; documents get the same replacement in :func:`read_document`."""
    return re.subn("[\ud800-\udfff]", "\ufffd", question)


def segment_cap(segment_tokens: int) -> int | None:
    """--segment-tokens: 0 -> None (as many as fit), else the positive cap."""
    if segment_tokens < 0:
        raise ConfigError(
            f"--segment-tokens must be >= 0 (0 = as many as fit), got {segment_tokens}"
        )
    return segment_tokens or None


def parse_layer(layer: str) -> int | None:
    """'auto' -> None, else a non-negative int (ConfigError otherwise)."""
    if layer.strip().lower() == "auto":
        return None
    try:
        value = int(layer)
    except ValueError:
        raise ConfigError(
            f"--layer must be 'auto' or a 0-based layer number, got {layer!r}"
        ) from None
    if value < 0:
        raise ConfigError(f"--layer must be >= 0 (0-based) or 'auto', got {value}")
    return value


def parse_window(window: str) -> int | None:
    """'question' -> None, 'last' -> 1, else a positive int (ConfigError otherwise)."""
    w = window.strip().lower()
    if w == "question":
        return None
    if w == "last":
        return 1
    try:
        value = int(w)
    except ValueError:
        raise ConfigError(
            f"--window must be 'question', 'last' or a number, got {window!r}"
        ) from None
    if value < 1:
        raise ConfigError(f"--window must be >= 1, got {value}")
    return value


def _setup(doc, question, model, device, dtype, threads, cfg: QAConfig):
    """Validate cheap inputs first, then load and check the prompt fits.

    Returns (lm, prompt, cfg with the layer resolved, the question as asked)."""
    if not question.strip():
        raise InputError("the question is empty")
    question, replaced = clean_question(question)
    if replaced:
        warn(f"{replaced} undecodable byte(s) in the question replaced with U+FFFD")
    document, replaced = read_document(doc)
    if replaced:
        warn(f"{replaced} undecodable byte sequence(s) in the document replaced with U+FFFD")
    lm = load(model, device, dtype, threads)
    if cfg.method == "gemfilter":
        if cfg.layer is None:
            layer, origin = cal.auto_layer(lm.model, lm.name, lm.source)
            cfg = QAConfig(**{**cfg.as_dict(), "layer": layer})
        else:
            origin = "given"
    prompt = prepare(lm.model, lm.tokenizer, document, question, cfg)
    if cfg.method == "gemfilter":
        err_console.print(
            f"[dim]{lm.name} ({lm.device}, {dtype_name(lm)}): gemfilter layer "
            f"{cfg.layer} ({origin}, 0-based of {lm.model.config.num_hidden_layers}), topk {cfg.topk} "
            f"({cfg.unit}s)[/]"
        )
        segments = len(segments_for(lm.model, prompt, cfg.segment_tokens))
        if segments > 1:
            ctx = lm.model.config.max_position_embeddings
            why = (
                f"the prompt is {prompt.n} tokens, over the model's context of {ctx}"
                if prompt.n > ctx
                else f"the document is {prompt.doc_len} tokens, over "
                f"--segment-tokens {cfg.segment_tokens}"
            )
            err_console.print(f"[dim]{why}: filtering the document in {segments} segments[/]")
    return lm, prompt, cfg, question


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
    kept = sorted(
        i - prompt.doc_start
        for i in chosen.indices.tolist()
        if prompt.doc_start <= i < prompt.doc_end
    )
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


# What only the gemfilter method reads; --method full reads the whole document.
FILTER_OPTIONS = (
    "layer",
    "topk",
    "smooth",
    "window",
    "protect",
    "split",
    "segment_tokens",
    "unit",
    "show",
)


@guarded
def ask(
    ctx: typer.Context,
    doc: DocArg,
    question: QuestionArg,
    model: ModelOpt = MODEL_DEFAULT,
    method: Annotated[str, typer.Option("--method", help="gemfilter | full")] = "gemfilter",
    layer: LayerOpt = "auto",
    topk: TopkOpt = DEFAULT_TOPK,
    smooth: SmoothOpt = DEFAULT_SMOOTH,
    window: WindowOpt = "question",
    protect: ProtectOpt = True,
    split: SplitOpt = True,
    segment_tokens: SegmentOpt = 0,
    unit: UnitOpt = DEFAULT_UNIT,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="Answer length limit.")
    ] = DEFAULT_MAX_NEW_TOKENS,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed (with --temperature).")] = 0,
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Show the document with selected tokens highlighted (stderr; long stretches "
            "with nothing selected are elided).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Answer QUESTION about DOC. GemFilter reads DOC with the early layers only, keeps the top-k
    tokens the question points at, and answers from those; --method full reads everything."""
    cfg = QAConfig(
        method=method,
        layer=parse_layer(layer),
        topk=topk,
        smooth=smooth,
        window=parse_window(window),
        protect=protect,
        split=split,
        segment_tokens=segment_cap(segment_tokens),
        unit=unit.strip().lower(),
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
    )
    if cfg.method == "full":
        warn_ignored(ctx, FILTER_OPTIONS, "with --method full (it reads the whole document)")
    lm, prompt, cfg, question = _setup(doc, question, model, device, dtype, threads, cfg)
    for event in run_qa(lm.model, lm.tokenizer, prompt.document, question, cfg, prompt):
        if isinstance(event, Selected) and show:
            show_selection(event)
        elif isinstance(event, Piece) and not json_out:
            typer.echo(event.text, nl=False)
            sys.stdout.flush()
        elif isinstance(event, Result):
            if json_out:
                out = event.as_dict()
                out["model"] = lm.name
                out["config"] = cfg.as_dict()
                typer.echo(json.dumps(out))
            else:
                typer.echo("")


@guarded
def gemfilter(
    doc: DocArg,
    question: QuestionArg,
    model: ModelOpt = MODEL_DEFAULT,
    layer: LayerOpt = "auto",
    topk: TopkOpt = DEFAULT_TOPK,
    smooth: SmoothOpt = DEFAULT_SMOOTH,
    window: WindowOpt = "question",
    split: SplitOpt = True,
    segment_tokens: SegmentOpt = 0,
    unit: UnitOpt = DEFAULT_UNIT,
    gap: Annotated[
        str,
        typer.Option(
            "--gap",
            help="Text printed between non-adjacent selected runs (default: ' … ').",
            show_default=False,
        ),
    ] = " … ",
    show: Annotated[
        bool,
        typer.Option(
            "--show",
            help="Also show the highlighted document (stderr; unselected stretches elided).",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Print only the document text GemFilter keeps for QUESTION (in order), e.g. to shrink a long
    file before giving it to another LLM. --json: indices (into the document's tokens) and scores."""
    cfg = QAConfig(
        method="gemfilter",
        layer=parse_layer(layer),
        topk=topk,
        smooth=smooth,
        window=parse_window(window),
        protect=True,
        split=split,
        segment_tokens=segment_cap(segment_tokens),
        unit=unit.strip().lower(),
    )
    lm, prompt, cfg, question = _setup(doc, question, model, device, dtype, threads, cfg)
    chosen = select_tokens(lm.model, prompt, cfg)
    if show:
        show_selection(chosen)
    doc_idx = [i for i in chosen.indices.tolist() if prompt.doc_start <= i < prompt.doc_end]
    runs: list[list[int]] = []
    for i in doc_idx:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    pieces = [lm.tokenizer.decode(prompt.ids[r].tolist()) for r in runs]
    text = gap.join(pieces)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "model": lm.name,
                    "layer": cfg.layer,
                    "topk": cfg.topk,
                    "prompt_tokens": prompt.n,
                    "document_tokens": prompt.doc_len,
                    "segments": chosen.segments,
                    "indices": [i - prompt.doc_start for i in doc_idx],
                    "scores": [round(float(chosen.scores[i]), 6) for i in doc_idx],
                    "text": text,
                }
            )
        )
    else:
        typer.echo(text.strip())


@guarded
def calibrate(
    model: ModelOpt = MODEL_DEFAULT,
    topk: Annotated[
        int, typer.Option("--topk", "--top-k", "-k", help="Top-k used to judge a layer.")
    ] = cal.DEFAULT_CALIBRATION_TOPK,
    needles: Annotated[
        int, typer.Option("--needles", help="How many different needles (1-6).")
    ] = cal.DEFAULT_NEEDLE_COUNT,
    window: WindowOpt = "question",
    unit: Annotated[
        str,
        typer.Option(
            "--unit",
            help="What counts as found: 'token' (half the needle's tokens in the top-k) or "
            "'sentence' (whole-sentence selection keeps all of the needle).",
        ),
    ] = "token",
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
    ] = True,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Find the best filter layer (0-based) for a model on a synthetic needle-in-a-haystack task
    over the bundled essays; print accuracy per layer and store the choice for --layer auto."""
    if topk <= 0:
        raise ConfigError(f"--topk must be > 0, got {topk}")
    unit = check_unit(unit.strip().lower())
    win = parse_window(window)
    lens = None
    if lengths is not None:
        try:
            lens = [int(x) for x in lengths.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(
                f"--lengths must be comma-separated integers, got {lengths!r}"
            ) from None
        if not lens:
            raise ConfigError(
                "--lengths is empty: give comma-separated token counts, e.g. 512,1024"
            )
    lm = load(model, device, dtype, threads)
    ctx = lm.model.config.max_position_embeddings
    if lens and (min(lens) < 16 or max(lens) > ctx - 64):
        raise ConfigError(f"--lengths must lie in 16..{ctx - 64} for this model, got {lengths}")
    shortest = min(lens or cal.default_lengths(ctx))
    if topk >= shortest:
        # every document token would be kept: each layer finds the needle, the choice means nothing
        raise ConfigError(
            f"--topk {topk} must be smaller than the shortest haystack ({shortest} tokens, "
            "see --lengths)"
        )
    cases = cal.calibration_cases(lm.tokenizer, ctx, lengths=lens, needles=needles)
    curve = None
    with err_console.status("calibrating ...") as status:
        for ev in cal.measure(lm.model, lm.tokenizer, cases, topk=topk, window=win, unit=unit):
            if isinstance(ev, cal.Progress):
                status.update(f"calibrating: case {ev.done}/{ev.total}")
            else:
                curve = ev
    best = curve.best()
    path = cal.save(lm.name, lm.source, curve) if save else None
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
    # short_help: one line each in `sepcli --help` (the docstrings are wrapped for the source)
    app.command(
        "ask",
        short_help="Answer a question about a document, reading the top-k tokens GemFilter picks.",
    )(ask)
    app.command(
        "gemfilter",
        short_help="Print only the document text GemFilter keeps for a "
        "question (to shrink a file for another tool).",
    )(gemfilter)
    app.command(
        "calibrate",
        short_help="Find and store the best GemFilter layer for a model "
        "(needle-in-a-haystack over the essays).",
    )(calibrate)
