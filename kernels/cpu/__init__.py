"""One-token kernels for CPUs in C (``decode.c``): 4-bit and int8 matrix-vector products and a
whole decoder step, loaded with ctypes. Pure-torch references: :mod:`kernels.cpu.reference`.

The C file is compiled once per machine and source version by the system's C compiler (``$CC``,
else ``cc``) with ``-O3 -march=native``, into a cache folder the caller names; a process loads it
once. The build has an AVX512-VNNI path, an AVX2 path and plain C loops, chosen by what the
compiler targets; they are used where the build has one of the first two (the plain loops are
for CPUs torch's own kernels serve better). ``SEPCLI_KERNELS`` chooses: ``auto`` (that rule),
``c`` (the C kernels whatever the build: for tests) or ``reference`` (never). Where they are
not used, :func:`load` returns None and :func:`why_not` says why: callers then run the torch
path.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("decode.c")
GROUP = 32  # inputs per 4-bit step and min: a GGUF Q4_1 block
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC")
PTRS_PER_LAYER = 2 + 7 * 4  # decode.c: ln1, ln2, then 7 x (codes, step, min, bias)

_loaded: dict[str, CpuKernels | None] = {}
_why: dict[str, str] = {}


@dataclass(frozen=True)
class Q4Weight:
    """A 4-bit weight [out, in] in decode.c's layout (:func:`pack_q4`).

    codes : [out, in/2] uint8; step, min : [out, in/32] fp16; bias : [out] fp32 or None.
    """

    codes: torch.Tensor
    step: torch.Tensor
    min: torch.Tensor
    bias: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.codes.shape[0]

    @property
    def in_features(self) -> int:
        return self.codes.shape[1] * 2


def q4_layout_fits(out_features: int, in_features: int) -> bool:
    """decode.c reads the groups of a row in pairs: in_features a multiple of 64."""
    return out_features > 0 and in_features % (2 * GROUP) == 0


def pack_q4(codes: torch.Tensor, step: torch.Tensor, low: torch.Tensor, bias=None) -> Q4Weight:
    """codes [out, in] (0..15), step and low [out, in/32]: w = low + code * step per group ->
    decode.c's layout: groups in pairs, byte j of a pair holding code j of the first group in
    its low nibble and code j of the second in its high one; step and low in fp16."""
    out, n_in = codes.shape
    if not q4_layout_fits(out, n_in):
        raise ValueError(f"a 4-bit weight needs in_features % 64 == 0, got {n_in}")
    pairs = codes.to(torch.uint8).reshape(out, n_in // (2 * GROUP), 2, GROUP)
    packed = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(out, n_in // 2).contiguous()
    return Q4Weight(
        packed,
        step.to(torch.float16).contiguous(),
        low.to(torch.float16).contiguous(),
        None if bias is None else bias.float().contiguous(),
    )


def _compiler() -> str:
    return os.environ.get("CC", "cc")


def _build_key(cc: str, flags: tuple[str, ...]) -> str:
    """What the library depends on: the source, the compiler and the CPU it targets."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(" ".join((cc, *flags)).encode())
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        h.update(version.stdout.encode())
    except (OSError, subprocess.SubprocessError):
        pass
    h.update(platform.machine().encode())
    try:  # -march=native: the build is only valid on a CPU with the same features
        flags_line = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")),
            "",
        )
        h.update(flags_line.encode())
    except OSError:
        pass
    return h.hexdigest()[:16]


ISAS = {2: "AVX512-VNNI", 1: "AVX2", 0: "plain C"}  # decode.c's sep_isa()


def _compile(folder: Path, march: str = "native") -> Path:
    """Build (or find) the library in ``folder``; raises RuntimeError with the compiler's words.
    ``march``: the CPU to build for; tests build ``x86-64-v3`` (the AVX2 path) and ``x86-64``
    (the plain loops) besides this machine's."""
    cc = _compiler()
    errors = []
    base = tuple(f if f != "-march=native" else f"-march={march}" for f in FLAGS)
    for extra in (("-fopenmp",), ()):  # OpenMP threads when the compiler has them
        flags = (*base, *extra)
        target = folder / f"decode-{_build_key(cc, flags)}.so"
        if target.exists():
            return target
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.exists():  # another process built it meanwhile
                return target
            fd, tmp = tempfile.mkstemp(dir=folder, suffix=".so")
            os.close(fd)
            cmd = [cc, *flags, "-o", tmp, str(SOURCE), "-lm"]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as e:
                done = None
                errors.append(f"{cc}: {e}")
            if done is not None and done.returncode == 0:
                os.replace(tmp, target)
                return target
            os.unlink(tmp)
            if done is not None:
                last = (done.stderr.strip().splitlines() or ["no message"])[-1]
                errors.append(f"{cc} exited {done.returncode}: {last}")
    raise RuntimeError("; ".join(errors))


def load(cache_dir: Path, march: str = "native") -> CpuKernels | None:
    """The compiled kernels (built into ``cache_dir`` on first use), or None: see :func:`why_not`.
    ``march``: see :func:`_compile`."""
    key = _key(cache_dir, march)
    if key in _loaded:
        return _loaded[key]
    lib, mode = None, os.environ.get("SEPCLI_KERNELS", "auto")
    if mode == "reference":
        _why[key] = "SEPCLI_KERNELS=reference"
    elif platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        _why[key] = f"no C kernels for {platform.machine()}"
    else:
        try:
            lib = CpuKernels(ctypes.CDLL(str(_compile(Path(cache_dir), march))))
        except (RuntimeError, OSError) as e:
            _why[key] = f"the C kernels did not build: {e}"
        if lib is not None and lib.isa == ISAS[0] and mode != "c":
            lib = None
            _why[key] = "the C kernels built without AVX2 or AVX512-VNNI here: torch's serve better"
    _loaded[key] = lib
    return lib


def why_not(cache_dir: Path, march: str = "native") -> str | None:
    """Why :func:`load` gave None for ``cache_dir`` (None when it loaded or was not asked)."""
    return _why.get(_key(cache_dir, march))


def _key(cache_dir: Path, march: str) -> str:
    return f"{cache_dir}|{os.environ.get('SEPCLI_KERNELS', 'auto')}|{march}"


def _ptr(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float


class CpuKernels:
    """ctypes bindings of decode.c; every tensor argument is a contiguous CPU tensor."""

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        lib.sep_isa.restype = _I
        lib.sep_q4_matvec.argtypes = [_P, _P, _P, _P, _I, _I, _P, _P, _I]
        lib.sep_int8_matvec.argtypes = [_P, _P, _P, _P, _P, _I, _I, _P, _P, _I]
        lib.sep_decode_layers.argtypes = [
            _I, _P, _I, _I, _I, _I, _I, _I, _F, _F,  # shape, eps, scale
            _P, _P, _P, _P, _I, _P, _I, _I, _I, _P, _P, _I,  # state, ring, positions, threads
        ]  # fmt: skip
        self.isa = ISAS[lib.sep_isa()]  # which of decode.c's paths this build has

    def q4_matvec(self, x: torch.Tensor, w: Q4Weight, threads: int) -> torch.Tensor:
        """x [in] fp32 -> y [out] fp32 = W x (+ bias), activations quantised per group of 32."""
        x = x.reshape(-1).float().contiguous()
        y = torch.empty(w.out_features)
        self.lib.sep_q4_matvec(
            _ptr(w.codes), _ptr(w.step), _ptr(w.min), _ptr(w.bias),
            w.out_features, w.in_features, _ptr(x), _ptr(y), threads,
        )  # fmt: skip
        return y

    def int8_matvec(
        self, x, weight, row_sums, scale, inv_smooth, bias, threads: int
    ) -> torch.Tensor:
        """The int8 layer of :class:`sepcli.quant.Int8Linear` for one token: x [in] fp32 ->
        [out] fp32, the same numbers as its torch path (int32 sums are exact)."""
        x = x.reshape(-1).float().contiguous()
        out, n_in = weight.shape
        y = torch.empty(out)
        self.lib.sep_int8_matvec(
            _ptr(weight), _ptr(row_sums), _ptr(scale), _ptr(inv_smooth), _ptr(bias),
            out, n_in, _ptr(x), _ptr(y), threads,
        )  # fmt: skip
        return y

    def decode_layers(self, step: DecodeStep, h, k_ring, v_ring, k_rot, slot_pos, slot: int,
                      q_pos: int, rerotate: bool, cos, sin, threads: int) -> None:  # fmt: skip
        """Run ``step``'s layers on h [hidden] (in place) for one token; see decode.c."""
        s = step
        self.lib.sep_decode_layers(
            s.layers, _ptr(s.table), s.hidden, s.q_heads, s.kv_heads, s.head_dim, s.inter,
            s.rot, s.eps, s.scale, _ptr(h), _ptr(k_ring), _ptr(v_ring), _ptr(k_rot),
            k_ring.shape[-2], _ptr(slot_pos), slot, q_pos, int(rerotate), _ptr(cos), _ptr(sin),
            threads,
        )  # fmt: skip


@dataclass(frozen=True)
class DecodeStep:
    """A model's layers as decode.c reads them: addresses of every layer's tensors in ``table``
    ([layers * PTRS_PER_LAYER] int64), and ``keep``, the tensors, so they outlive the table."""

    layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    inter: int
    rot: int
    eps: float
    scale: float
    table: torch.Tensor
    keep: tuple

    @classmethod
    def build(cls, layers: list[dict], **shape) -> DecodeStep:
        """layers: per layer ``ln1``, ``ln2`` (fp32) and ``q, k, v, o, gate, up, down``
        (:class:`Q4Weight`)."""
        ptrs, keep = [], []
        for layer in layers:
            norms = [layer["ln1"].float().contiguous(), layer["ln2"].float().contiguous()]
            keep += norms
            ptrs += [_ptr(n) for n in norms]
            for name in ("q", "k", "v", "o", "gate", "up", "down"):
                w = layer[name]
                keep.append(w)
                ptrs += [_ptr(w.codes), _ptr(w.step), _ptr(w.min), _ptr(w.bias)]
        table = torch.tensor(ptrs, dtype=torch.int64)
        return cls(len(layers), table=table, keep=tuple(keep), **shape)
