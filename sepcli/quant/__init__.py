"""int8 linear layers for CPUs: int8 weights, int8 activations quantised per token, fp32 out.

After loading, the attention and MLP projections and the LM head are swapped for
:class:`Int8Linear`; everything else (embeddings, norms, RoPE, attention, the ring cache) stays
fp32. The matmul is ``torch._int_mm`` (oneDNN's int8 x int8 -> int32 GEMM, VNNI where the CPU
has it), 2-4x faster than an fp32 GEMM on these shapes.

Two things keep the perplexity within 0.1% of fp32 where plain dynamic quantisation loses 12%:

- **Per-token activation scales.** One scale for a whole chunk (torch's dynamic quantisation)
  lets one loud token (the first one, a newline) flatten every other; each token gets its own.
- **SmoothQuant** (Xiao et al., 2023, "SmoothQuant: Accurate and Efficient Post-Training
  Quantization for Large Language Models"): a few input channels carry activations 10-100x
  the rest. Channel j of the input is divided by s_j = max|x_j|^a / max|W_:,j|^(1-a) (a = 0.5)
  and column j of the weight multiplied by it, which moves the outliers into the weights, where
  per-channel int8 absorbs them. max|x_j| comes from one fp32 pass over a short fixed text
  (:data:`CALIBRATION_TEXT`) at load time.

**One token at a time** (decoding) a layer reads all its weights to make one row, so the step is
bound by memory, not by arithmetic. A layer whose fp32 weights are exactly 4-bit per group of 32
(every projection of a GGUF Q4_1 model, dequantised) keeps them a second time as 4-bit codes
with a step and min per group (:func:`exact_int4`), and a one-token input goes through a 4-bit
product: the C kernel of :mod:`sepcli.kernels.cpu` (activations quantised per group of 32, integer dot
products; built once per machine), or where it cannot be built ``_weight_int4pack_mm_for_cpu``
with bf16 activations. The LM head (int8) takes one token through the C kernel too, with the
same numbers as the torch path. Chunks keep the int8 GEMM, which is 4x faster than a 4-bit
product from 8 tokens up.

The package, by job: :mod:`.int8` (the layer), :mod:`.int4` (4-bit detection and packing),
:mod:`.c_kernels` (locating the C kernels), :mod:`.calibration`, :mod:`.surgery` (swapping a
model's layers) and :mod:`.report` (what `sepcli info` says about them).
"""

from __future__ import annotations

from sepcli.quant.c_kernels import cpu_kernels, cpu_kernels_missing
from sepcli.quant.calibration import CALIBRATION_TEXT, input_ranges
from sepcli.quant.int4 import GROUP, exact_int4, torch_int4_pack
from sepcli.quant.int8 import ALPHA, Int8Linear, int4_linear
from sepcli.quant.report import decode_kernels, int8_weights
from sepcli.quant.surgery import is_int8, quantize_linears
from sepcli.runtime import int8_supported

__all__ = [
    "ALPHA",
    "CALIBRATION_TEXT",
    "GROUP",
    "Int8Linear",
    "cpu_kernels",
    "cpu_kernels_missing",
    "decode_kernels",
    "exact_int4",
    "input_ranges",
    "int4_linear",
    "int8_supported",
    "int8_weights",
    "is_int8",
    "quantize_linears",
    "torch_int4_pack",
]
