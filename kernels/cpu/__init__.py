"""CPU kernels in C, loaded with ctypes: matrix-vector products and GEMMs on 4-bit, int8 and
GGUF-block weights, and a whole decoder step. Pure-torch references: :mod:`kernels.cpu.reference`
and :mod:`kernels.quant`.

Where things are:

* :mod:`kernels.cpu.build`: compiler, flags, OpenMP, cache folder, lock; :func:`load` and
  :func:`why_not` (the rule for when the C kernels are used).
* :mod:`kernels.cpu.bindings`: :class:`CpuKernels`, the ctypes bindings.
* :mod:`kernels.cpu.layouts`: the layouts the C code reads (:class:`Q4Weight`,
  :class:`DecodeStep`).
* C: ``isa.h`` picks the instruction set and includes one of ``isa_avx512.h``, ``isa_avx2.h``,
  ``isa_plain.h``; ``blocks.h`` holds the GGUF block formats' products; ``decode.c`` the rest.
"""

from __future__ import annotations

from .bindings import CpuKernels
from .build import ISAS, SOURCE, load, why_not
from .layouts import (
    GROUP,
    KIND_Q4,
    PTRS_PER_LAYER,
    DecodeStep,
    Q4Weight,
    pack_q4,
    q4_layout_fits,
)

__all__ = [
    "GROUP",
    "ISAS",
    "KIND_Q4",
    "PTRS_PER_LAYER",
    "SOURCE",
    "CpuKernels",
    "DecodeStep",
    "Q4Weight",
    "load",
    "pack_q4",
    "q4_layout_fits",
    "why_not",
]
