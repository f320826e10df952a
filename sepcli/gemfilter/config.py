"""Settings of a GemFilter / full-attention QA run, validated once.

Layer numbering is 0-based everywhere (the module index in ``model.model.layers``): the paper's
"layer 13 of 32" for Llama-3.1-8B-Instruct is ``layer=13`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sepcli.errors import ConfigError
from sepcli.generate.repeats import DEFAULT_TIMES as DEFAULT_STOP_REPEATS
from sepcli.generate.repeats import check_times

METHODS = ("gemfilter", "full")
UNITS = ("token", "sentence")

# Chosen from bench/niah.py (see docs/gemfilter.md): the defaults the CLI exposes.
DEFAULT_TOPK = 1024
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_SMOOTH = 5  # average-pool width over the scores (as the reference); 1 = none
DEFAULT_PROTECT = True  # always keep the template head and the question tail
DEFAULT_WINDOW = None  # None = the question: every prompt token after the document votes
DEFAULT_SPLIT = True  # filter a document longer than the context in segments that fit
DEFAULT_UNIT = "sentence"  # whole sentences: 24/36 needles answered vs 13/36 (docs/gemfilter.md)


def check_unit(unit: str) -> str:
    """``unit`` if it is one of :data:`UNITS`, else ConfigError."""
    if unit not in UNITS:
        raise ConfigError(f"--unit must be one of {', '.join(UNITS)}, got {unit!r}")
    return unit


@dataclass(frozen=True)
class QAConfig:
    """One question over one document.

    layer: 0-based filter layer r (layers above r never run in the filter pass); None = not yet
        resolved (``--layer auto`` resolves it from the calibration, see ``calibrate.auto_layer``).
    topk: document tokens kept for the answer pass (min(topk, n); without ``protect`` it counts
        every prompt token, as in the paper).
    smooth: odd width of the moving average over scores before top-k (1 = off).
    protect: keep every non-document prompt token (system/template head, question, tail) on
        top of the top-k document tokens.
    window: how many of the last prompt tokens' queries score the keys (their scores are
        summed); 1 = the paper's last token only; None = the question and template tail
        (every token after the document).
    split: when the prompt exceeds the model's context, run the filter pass over equal segments
        of the document that fit (each with the template head and the question), and keep the
        top-k over all of them (gemfilter only; ``full`` always refuses such a document).
    segment_tokens: at most this many document tokens per filter pass (None = as many as fit in
        the context); a document longer than that is split even when it would fit.
    unit: what top-k keeps: ``token`` (the paper: the k best tokens) or ``sentence`` (whole
        sentences, best first by their highest token score, up to k document tokens; smoothing
        does not apply).
    max_new_tokens, temperature (0 = greedy), seed: decoding.
    stop_repeats: end the answer when it loops, a span of 8+ tokens said this many times in a
        row (:mod:`sepcli.generate.repeats`; 0 = off).
    """

    method: str = "gemfilter"
    layer: int | None = None
    topk: int = DEFAULT_TOPK
    smooth: int = DEFAULT_SMOOTH
    protect: bool = DEFAULT_PROTECT
    window: int | None = DEFAULT_WINDOW
    split: bool = DEFAULT_SPLIT
    segment_tokens: int | None = None
    unit: str = DEFAULT_UNIT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    seed: int = 0
    stop_repeats: int = DEFAULT_STOP_REPEATS

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.layer is not None and self.layer < 0:
            raise ConfigError(f"--layer must be >= 0 (0-based) or 'auto', got {self.layer}")
        if self.topk <= 0:
            raise ConfigError(f"--topk must be > 0, got {self.topk}")
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ConfigError(f"--smooth must be an odd width >= 1, got {self.smooth}")
        if self.window is not None and self.window < 1:
            raise ConfigError(f"--window must be >= 1 or 'question', got {self.window}")
        if self.segment_tokens is not None and self.segment_tokens <= 0:
            raise ConfigError(f"--segment-tokens must be > 0, got {self.segment_tokens}")
        if self.segment_tokens is not None and not self.split:
            raise ConfigError("--segment-tokens needs --split")
        check_unit(self.unit)
        if self.max_new_tokens <= 0:
            raise ConfigError(f"--max-new-tokens must be > 0, got {self.max_new_tokens}")
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ConfigError(f"--temperature must be >= 0, got {self.temperature}")
        check_times(self.stop_repeats)

    def check_layer(self, layers: int) -> None:
        """Raise ConfigError unless ``layer`` exists in a model with ``layers`` decoder layers."""
        if self.layer is not None and self.layer >= layers:
            raise ConfigError(
                f"--layer {self.layer} is out of range: this model has {layers} layers, "
                f"numbered 0..{layers - 1}"
            )

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
