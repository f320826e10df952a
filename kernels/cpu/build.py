"""The one place that builds and loads the C kernels: compiler, flags, OpenMP, cache folder,
lock, and the rule for when they are used.

``decode.c`` (with the headers beside it) is compiled once per machine and source version by
the system's C compiler (``$CC``, else ``cc``) with ``-O3 -march=native`` into a cache folder the
caller names; a process loads it once. The build has an AVX512-VNNI path, an AVX2 path and
plain C loops (isa.h), chosen by what the compiler targets; they are used where the build has
one of the first two (the plain loops are for CPUs torch's own kernels serve better).
``SEPCLI_KERNELS`` chooses: ``auto`` (that rule), ``c`` (the C kernels whatever the build: for
tests) or ``reference`` (never). Where they are not used, :func:`load` returns None and
:func:`why_not` says why: callers then run the torch path.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
SOURCE = HERE / "decode.c"  # the translation unit; it includes the headers below
HEADERS = ("isa.h", "isa_avx512.h", "isa_avx2.h", "isa_plain.h", "blocks.h", "panel_avx512.h")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=gnu11")
# The threads of the C loops: OpenMP where the compiler has it (libgomp: a second OpenMP
# runtime beside torch's), else one thread. The one place this is chosen.
OPENMP_CHOICES = (("-fopenmp",), ())
ISAS = {2: "AVX512-VNNI", 1: "AVX2", 0: "plain C"}  # decode.c's sep_isa()

_loaded: dict[str, object] = {}
_why: dict[str, str] = {}


def compiler() -> str:
    return os.environ.get("CC", "cc")


def _build_key(cc: str, flags: tuple[str, ...]) -> str:
    """What the library depends on: the sources, the compiler and the CPU it targets."""
    h = hashlib.sha256(SOURCE.read_bytes())
    for name in HEADERS:
        h.update((HERE / name).read_bytes())
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


def compile_library(folder: Path, march: str = "native") -> Path:
    """Build (or find) the library in ``folder``; raises RuntimeError with the compiler's words.
    ``march``: the CPU to build for; tests build ``x86-64-v3`` (the AVX2 path) and ``x86-64``
    (the plain loops) besides this machine's."""
    cc = compiler()
    errors = []
    base = tuple(f if f != "-march=native" else f"-march={march}" for f in FLAGS)
    for extra in OPENMP_CHOICES:
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
            cmd = [cc, *flags, "-I", str(HERE), "-o", tmp, str(SOURCE), "-lm"]
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


def load(cache_dir: Path, march: str = "native"):
    """The compiled kernels (:class:`~kernels.cpu.bindings.CpuKernels`, built into
    ``cache_dir`` on first use), or None: see :func:`why_not`. ``march``: see
    :func:`compile_library`."""
    from .bindings import CpuKernels

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
            lib = CpuKernels(ctypes.CDLL(str(compile_library(Path(cache_dir), march))))
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
