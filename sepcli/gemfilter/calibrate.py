"""Find a model's filter layer by measurement, store it per model, and resolve ``--layer auto``.

For each synthetic needle case the stack runs once; at every layer the query window's scores are
taken (one pass gives all layers, see :func:`filter.layer_scores`). With ``unit="token"`` (the
default) a case is a hit at layer r when at least half of the needle's tokens are among the
top-k document tokens; with ``unit="sentence"`` when whole-sentence selection (what ``ask``
keeps by default) keeps every token of the needle. The chosen layer maximises (hit rate, mean
needle recall), preferring the earlier (cheaper) layer on ties.

Without a stored calibration, ``--layer auto`` uses the layer we measured for a model we ship
(:data:`MEASURED_LAYERS`: the embedded SmolLM2-135M-Instruct), else ``round(0.4 * layers)``
(0-based), the depth ratio of the paper's choice for Llama-3.1-8B (13 of 32).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sepcli import arch
from sepcli.errors import ConfigError
from sepcli.files import write_atomic
from sepcli.gemfilter.config import (
    DEFAULT_SMOOTH,
    DEFAULT_WINDOW,
    SELECTION_UNITS,
    check_unit,
    parse_window,
)
from sepcli.gemfilter.filter import layer_scores
from sepcli.gemfilter.needles import NEEDLES, NeedleCase, make_grid
from sepcli.gemfilter.prompt import build_prompt
from sepcli.gemfilter.selection import sentence_units, smooth_scores, top_spans
from sepcli.models import cache_dir

FALLBACK_RATIO = 0.4
# Layers measured with `python bench/niah_calibrate.py` (bench/results/niah-calibration.json),
# used by `--layer auto` until the user runs `sepcli calibrate` on their own machine.
MEASURED_LAYERS = {"SmolLM2-135M-Instruct": 17}
HIT_RECALL = 0.5
DEFAULT_CALIBRATION_TOPK = 256
DEFAULT_DEPTHS = (0.1, 0.5, 0.9)
DEFAULT_NEEDLE_COUNT = 3


def fallback_layer(layers: int) -> int:
    return min(layers - 1, max(0, round(FALLBACK_RATIO * layers)))


def default_lengths(context_length: int) -> list[int]:
    """1/8, 1/4 and 1/2 of the context (at least 256 tokens, leaving room for the template)."""
    ctx = context_length or 4096
    return sorted({max(128, min(ctx - 128, ctx // d)) for d in (8, 4, 2)})


def check_settings(
    topk: int, unit: str, needles: int = DEFAULT_NEEDLE_COUNT, lengths: list[int] | None = None
) -> None:
    """ConfigError for settings that are wrong for any model (checked before loading one).
    ``lengths``: haystack lengths in tokens, None for :func:`default_lengths`."""
    if topk <= 0:
        raise ConfigError(f"--topk must be > 0, got {topk}")
    check_unit(unit)
    if needles < 1 or needles > len(NEEDLES):
        raise ConfigError(f"--needles must be in 1..{len(NEEDLES)}, got {needles}")
    if lengths is not None and not lengths:
        raise ConfigError("--lengths is empty: give comma-separated token counts, e.g. 512,1024")


def parse_lengths(lengths: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """--lengths "512,1024" -> (512, 1024); None when not given (ConfigError when not integers)."""
    if lengths is None or not isinstance(lengths, str):
        return None if lengths is None else tuple(lengths)
    try:
        return tuple(int(x) for x in lengths.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--lengths must be comma-separated integers, got {lengths!r}") from None


@dataclass(frozen=True)
class CalibrateConfig:
    """One ``sepcli calibrate`` run (each field is one option; CLI spellings accepted).

    topk : top-k used to judge a layer. needles : how many different needles (1-6).
    window : whose queries score (as :class:`~sepcli.gemfilter.config.QAConfig`; stored
        resolved). judge : what counts as found (``token`` | ``sentence``; not ``ask``'s
        ``--unit``: the chosen layer serves both). lengths : haystack lengths in tokens (None:
        :func:`default_lengths`). save : store the choice for ``--layer auto``.
    """

    topk: int = DEFAULT_CALIBRATION_TOPK
    needles: int = DEFAULT_NEEDLE_COUNT
    window: int | str | None = DEFAULT_WINDOW
    judge: str = "token"
    lengths: tuple[int, ...] | str | None = None
    save: bool = True

    def __post_init__(self) -> None:
        judge = self.judge.strip().lower()
        if judge not in SELECTION_UNITS:
            raise ConfigError(f"--judge must be one of {', '.join(SELECTION_UNITS)}, got {judge!r}")
        object.__setattr__(self, "judge", judge)
        object.__setattr__(self, "window", parse_window(self.window))
        object.__setattr__(self, "lengths", parse_lengths(self.lengths))
        lengths = None if self.lengths is None else list(self.lengths)
        check_settings(self.topk, self.judge, self.needles, lengths)


def haystack_lengths(context_length: int, lengths: list[int] | None, topk: int) -> list[int]:
    """The haystack lengths to measure (``lengths`` or :func:`default_lengths`), checked against
    the model's context and against ``topk``: a top-k that keeps every token of the shortest
    haystack would find the needle at every layer, and the choice would mean nothing."""
    if lengths and (min(lengths) < 16 or max(lengths) > context_length - 64):
        shown = ",".join(map(str, lengths))
        raise ConfigError(
            f"--lengths must lie in 16..{context_length - 64} for this model, got {shown}"
        )
    lengths = lengths or default_lengths(context_length)
    if topk >= min(lengths):
        raise ConfigError(
            f"--topk {topk} must be smaller than the shortest haystack ({min(lengths)} tokens, "
            "see --lengths)"
        )
    return lengths


@dataclass
class Curve:
    """Per-layer hit rate and mean needle recall over the calibration cases."""

    layers: int
    topk: int
    window: int | None = parse_window(DEFAULT_WINDOW)
    unit: str = "token"
    cases: int = 0
    hits: list[int] = field(default_factory=list)
    recall_sum: list[float] = field(default_factory=list)

    def __post_init__(self):
        self.hits = self.hits or [0] * self.layers
        self.recall_sum = self.recall_sum or [0.0] * self.layers

    def accuracy(self, layer: int) -> float:
        return self.hits[layer] / max(1, self.cases)

    def recall(self, layer: int) -> float:
        return self.recall_sum[layer] / max(1, self.cases)

    def best(self) -> int:
        return max(
            range(self.layers), key=lambda r: (self.accuracy(r), round(self.recall(r), 3), -r)
        )


@dataclass
class Progress:
    done: int
    total: int


def needle_recall(
    case: NeedleCase,
    prompt,
    scores: torch.Tensor,
    topk: int,
    smooth: int,
    sentences: list[tuple[int, int]] | None = None,
) -> float:
    """Fraction of the needle's tokens among the top-k document tokens ([T] scores), or, given
    the document's ``sentences``, among the tokens of the whole sentences selected for k."""
    if sentences is None:
        doc = smooth_scores(scores.float(), smooth)[prompt.doc_start : prompt.doc_end]
        top = set((doc.topk(min(topk, doc.numel())).indices + prompt.doc_start).tolist())
    else:
        top = set(top_spans(scores, sentences, topk).tolist())
    return case.recall(prompt, top)


def measure(
    model,
    tokenizer,
    cases: list[NeedleCase],
    topk: int = DEFAULT_CALIBRATION_TOPK,
    smooth: int = DEFAULT_SMOOTH,
    window: int | None = parse_window(DEFAULT_WINDOW),
    unit: str = "token",
) -> Iterator[Progress | Curve]:
    """Yield Progress after each case, then the Curve (``window`` as in QAConfig; ``unit``
    decides what counts as found, see the module docstring)."""
    check_settings(topk, unit)
    shape = arch.shape_of(model)
    device = next(model.parameters()).device
    curve = Curve(layers=shape.layers, topk=topk, window=window, unit=unit)
    hit = HIT_RECALL if unit == "token" else 1.0
    for i, case in enumerate(cases):
        prompt = build_prompt(tokenizer, case.document, case.question, shape.context_length or None)
        sentences = None
        if unit == "sentence":
            sentences = sentence_units(prompt, True, topk)
        ids = prompt.ids.to(device).unsqueeze(0)
        scored = layer_scores(model, ids, range(shape.layers), prompt.window(window))
        for layer, scores in scored:
            r = needle_recall(case, prompt, scores[0].cpu(), topk, smooth, sentences)
            curve.recall_sum[layer] += r
            curve.hits[layer] += r >= hit
        curve.cases += 1
        yield Progress(i + 1, len(cases))
    yield curve


def calibration_cases(
    tokenizer,
    context_length: int,
    lengths=None,
    depths=DEFAULT_DEPTHS,
    needles=DEFAULT_NEEDLE_COUNT,
):
    check_settings(DEFAULT_CALIBRATION_TOPK, "token", needles)
    return make_grid(
        tokenizer, lengths or default_lengths(context_length), depths, NEEDLES[:needles]
    )


# ---------------------------------------------------------------- storage


def calibration_path(model_name: str, model_source: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name)[:80]
    digest = hashlib.sha256(model_source.encode()).hexdigest()[:12]
    return cache_dir() / "calibration" / f"{slug}-{digest}.json"


def save(model_name: str, model_source: str, curve: Curve, extra: dict | None = None) -> Path:
    """Write the choice atomically; returns the path."""
    path = calibration_path(model_name, model_source)
    record = {
        "model": model_name,
        "source": model_source,
        "layer": curve.best(),
        "layer_numbering": "0-based",
        "topk": curve.topk,
        "window": "question" if curve.window is None else curve.window,
        "unit": curve.unit,
        "cases": curve.cases,
        "accuracy": [round(curve.accuracy(r), 4) for r in range(curve.layers)],
        "recall": [round(curve.recall(r), 4) for r in range(curve.layers)],
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **(extra or {}),
    }
    data = json.dumps(record, indent=1).encode()
    write_atomic(path, lambda f: f.write(data), ConfigError, "calibration record")
    return path


def load(model_name: str, model_source: str) -> dict | None:
    """The stored record, or None when absent or unreadable (a broken file is ignored)."""
    path = calibration_path(model_name, model_source)
    try:
        record = json.loads(path.read_text())
        int(record["layer"])
        return record
    except (OSError, ValueError, KeyError, TypeError):
        return None


def auto_layer(model, model_name: str, model_source: str) -> tuple[int, str]:
    """(0-based layer, where it came from: 'calibrated' | 'measured' | 'fallback')."""
    layers = arch.shape_of(model).layers
    record = load(model_name, model_source)
    if record is not None and 0 <= int(record["layer"]) < layers:
        return int(record["layer"]), "calibrated"
    measured = MEASURED_LAYERS.get(model_name)
    if measured is not None and 0 <= measured < layers:
        return measured, "measured"
    return fallback_layer(layers), "fallback"
