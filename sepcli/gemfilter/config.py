"""Settings of a GemFilter / full-attention QA run, validated once.

Layer numbering is 0-based everywhere (the module index in ``model.model.layers``): the paper's
"layer 13 of 32" for Llama-3.1-8B-Instruct is ``layer=13`` here.
"""

from __future__ import annotations

from dataclasses import dataclass

from sepcli.errors import ConfigError
from sepcli.generate.repeats import DEFAULT_TIMES as DEFAULT_STOP_REPEATS
from sepcli.generate.repeats import check_times
from sepcli.generate.sampling import SamplingConfig

QA_METHODS = ("gemfilter", "full")
SELECTION_UNITS = ("token", "sentence")

# Chosen with the bench/niah_*.py benches (see docs/gemfilter.md): the defaults the CLI exposes,
# in the spelling the CLI takes (QAConfig resolves "auto", "question" and 0 to None).
DEFAULT_LAYER = "auto"  # the calibration stored for the model, else round(0.4 x layers)
DEFAULT_TOPK = 1024
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_SMOOTH = 5  # average-pool width over the scores (as the reference); 1 = none
DEFAULT_PROTECT = True  # always keep the template head and the question tail
DEFAULT_WINDOW = "question"  # every prompt token after the document votes
DEFAULT_SPLIT = True  # filter a document longer than the context in segments that fit
DEFAULT_SEGMENT_TOKENS = 0  # as many document tokens per filter pass as fit
DEFAULT_UNIT = "sentence"  # whole sentences: more needles answered (docs/gemfilter.md)


def check_unit(unit: str) -> str:
    """``unit`` (trimmed, lower case) if it is one of :data:`SELECTION_UNITS`, else ConfigError."""
    unit = unit.strip().lower()
    if unit not in SELECTION_UNITS:
        raise ConfigError(f"--unit must be one of {', '.join(SELECTION_UNITS)}, got {unit!r}")
    return unit


def parse_layer(layer: int | str | None) -> int | None:
    """'auto' (or None) -> None, else a non-negative int (ConfigError otherwise)."""
    if layer is None or (isinstance(layer, str) and layer.strip().lower() == "auto"):
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


def parse_window(window: int | str | None) -> int | None:
    """'question' (or None) -> None, 'last' -> 1, else a positive int (ConfigError otherwise)."""
    w = window.strip().lower() if isinstance(window, str) else window
    if w is None or w == "question":
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


@dataclass(frozen=True)
class QAConfig:
    """One question over one document.

    Fields take the CLI's spellings too: ``layer="auto"``, ``window="question"`` / ``"last"``
    / a number as text, ``segment_tokens=0``; they are stored resolved (None, None / 1 / int,
    None).

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
    max_new_tokens: decoding; temperature (0 = greedy), seed: :attr:`sampling`.
    stop_repeats: end the answer when it loops, a span of 8+ tokens said this many times in a
        row (:mod:`sepcli.generate.repeats`; 0 = off).
    """

    method: str = "gemfilter"
    layer: int | str | None = DEFAULT_LAYER
    topk: int = DEFAULT_TOPK
    smooth: int = DEFAULT_SMOOTH
    protect: bool = DEFAULT_PROTECT
    window: int | str | None = DEFAULT_WINDOW
    split: bool = DEFAULT_SPLIT
    segment_tokens: int | None = DEFAULT_SEGMENT_TOKENS
    unit: str = DEFAULT_UNIT
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = SamplingConfig.temperature
    seed: int = SamplingConfig.seed
    stop_repeats: int = DEFAULT_STOP_REPEATS

    def __post_init__(self):
        if self.method not in QA_METHODS:
            raise ConfigError(
                f"--method must be one of {', '.join(QA_METHODS)}, got {self.method!r}"
            )
        object.__setattr__(self, "layer", parse_layer(self.layer))
        object.__setattr__(self, "window", parse_window(self.window))
        if self.topk <= 0:
            raise ConfigError(f"--topk must be > 0, got {self.topk}")
        if self.smooth < 1 or self.smooth % 2 == 0:
            raise ConfigError(f"--smooth must be an odd width >= 1, got {self.smooth}")
        if self.segment_tokens is not None and self.segment_tokens < 0:
            raise ConfigError(
                f"--segment-tokens must be >= 0 (0 = as many as fit), got {self.segment_tokens}"
            )
        object.__setattr__(self, "segment_tokens", self.segment_tokens or None)
        if self.segment_tokens is not None and not self.split:
            raise ConfigError("--segment-tokens needs --split")
        object.__setattr__(self, "unit", check_unit(self.unit))
        if self.max_new_tokens <= 0:
            raise ConfigError(f"--max-new-tokens must be > 0, got {self.max_new_tokens}")
        self.sampling  # noqa: B018 - checks temperature and seed (the sampler's own rule)
        check_times(self.stop_repeats)

    @property
    def sampling(self) -> SamplingConfig:
        """How the answer's tokens are picked."""
        return SamplingConfig(temperature=self.temperature, seed=self.seed)

    def check_layer(self, layers: int) -> None:
        """Raise ConfigError unless ``layer`` exists in a model with ``layers`` decoder layers."""
        if self.layer is not None and self.layer >= layers:
            raise ConfigError(
                f"--layer {self.layer} is out of range: this model has {layers} layers, "
                f"numbered 0..{layers - 1}"
            )

    def as_dict(self) -> dict:
        return {f: getattr(self, f) for f in self.__dataclass_fields__}
