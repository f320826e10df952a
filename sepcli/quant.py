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
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sepcli import arch
from sepcli.errors import ModelError
from sepcli.kernels import cpu
from sepcli.kernels.cpu import Q4Weight, pack_q4, q4_layout_fits

ALPHA = 0.5  # SmoothQuant migration strength: half of the outlier range moves to the weights
GROUP = 32  # input channels per 4-bit scale and zero: a GGUF Q4_0/Q4_1 block
_CHECK_ROWS = 1024

# A mix of prose, numbers, code and dialogue: the channels that carry outliers are a property of
# the model, not of the text, so a few hundred tokens of anything find them.
CALIBRATION_TEXT = """\
The river rose through the night, and by morning the lower fields were under a brown sheet of \
water. Farmers stood on the levee and counted what they had lost: two barns, a tractor, most of \
the winter wheat. "We have seen worse," said the oldest of them, though nobody believed him.

In 1854 the physician John Snow mapped the cholera deaths around Broad Street in London and \
noticed that they clustered near a single public pump. He persuaded the parish to remove its \
handle; the outbreak, already waning, ended within days.

def mean(values):
    \"\"\"Return the arithmetic mean of a non-empty list.\"\"\"
    return sum(values) / len(values)

Q: What is the capital of Australia?
A: Canberra, not Sydney, although Sydney is the largest city.

Prices rose 3.2% over the year to March, while wages grew by 4.1%; economists expect the \
central bank to hold rates at 5.25% until the autumn.

She opened the letter slowly. It was short, written in pencil, and signed only with an \
initial. Meet me at the station at six, it said; bring nothing.
"""


def int8_supported(device: torch.device) -> str | None:
    """None when the int8 path runs on ``device``, else why not (one line)."""
    if device.type != "cpu":
        return f"--dtype int8 runs on a CPU only, not on {device.type}"
    if not torch.backends.mkldnn.is_available():
        return "--dtype int8 needs torch built with oneDNN (mkldnn), which this build lacks"
    return None


class Int8Linear(nn.Module):
    """A frozen ``nn.Linear`` as int8: weights per output channel, inputs per token, both after
    SmoothQuant's per-input-channel scaling; int32 accumulation.

    linear : the fp32 layer, weight [out, in].
    act_max : [in] max |input| per channel seen on calibration text.
    forward: x [..., in] fp32 -> [..., out] fp32.
    """

    def __init__(self, linear: nn.Linear, act_max: torch.Tensor, alpha: float = ALPHA):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.tied = False
        w = linear.weight.detach().float()  # (out, in)
        smooth = act_max.float().clamp_min(1e-5) ** alpha
        smooth = (smooth / w.abs().amax(dim=0).clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)
        self.register_buffer("inv_smooth", 1.0 / smooth)  # (in,)
        w = w * smooth  # x W^T == (x / s)(W s)^T
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12)  # (out,)
        # Stored [out, in] and used transposed: the layout oneDNN's int8 GEMM reads fastest
        # for one token at a time, and as fast as [in, out] for a chunk.
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).to(torch.int8))
        self.register_buffer("weight_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)
        # 4-bit copy for one token: decode.c's layout where the C kernels load, else torch's
        kern, int4 = cpu_kernels(), exact_int4(linear.weight.detach().float())
        native = int4 is not None and kern is not None and q4_layout_fits(*w.shape)
        q4 = pack_q4(*int4) if native else None
        self.register_buffer("q4_codes", None if q4 is None else q4.codes)
        self.register_buffer("q4_step", None if q4 is None else q4.step)
        self.register_buffer("q4_min", None if q4 is None else q4.min)
        packed = torch_int4_pack(*int4) if int4 is not None and not native else None
        self.register_buffer("weight_int4", None if packed is None else packed[0])
        self.register_buffer("int4_scale_zero", None if packed is None else packed[1])
        # a layer without 4-bit weights (the head) takes one token through the C int8 kernel,
        # whose xu = q + 128 needs each row's sum
        sums = None if kern is None or native else self.weight_int8.sum(dim=1, dtype=torch.int32)
        self.register_buffer("row_sums", sums)
        self.kernels = kern  # the C kernels this layer's layout was made for (or None)

    @property
    def has_int4(self) -> bool:
        """The layer holds exact 4-bit weights for one-token inputs."""
        return self.q4_codes is not None or self.weight_int4 is not None

    @property
    def q4(self) -> Q4Weight | None:
        """The 4-bit weight in the C kernel's layout, or None."""
        if self.q4_codes is None:
            return None
        return Q4Weight(self.q4_codes, self.q4_step, self.q4_min, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        if x.numel() == self.in_features:  # one token
            if self.has_int4:
                y = int4_linear(x.reshape(1, -1), self)
                return y.reshape(*lead, self.out_features)
            if self.row_sums is not None:
                y = self.kernels.int8_matvec(
                    x, self.weight_int8, self.row_sums, self.weight_scale, self.inv_smooth,
                    self.bias, torch.get_num_threads(),
                )  # fmt: skip
                return y.reshape(*lead, self.out_features)
        x = x.reshape(-1, self.in_features).float() * self.inv_smooth  # (tokens, in)
        row = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 127  # (tokens, 1)
        xq = x.div(row).round_().to(torch.int8)
        # (tokens, out) int32; the int32 * fp32 product is fp32, one pass, no separate cast
        y = torch._int_mm(xq, self.weight_int8.t()) * row
        y.mul_(self.weight_scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        four = ", 4-bit for one token" if self.has_int4 else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, int8{four}"


def cpu_kernels() -> cpu.CpuKernels | None:
    """The C one-token kernels, built into the user cache on first use; None where they cannot
    be (:func:`cpu_kernels_missing` says why)."""
    return cpu.load(_kernel_dir())


def cpu_kernels_missing() -> str | None:
    """Why :func:`cpu_kernels` is None, or None."""
    return cpu.why_not(_kernel_dir())


def _kernel_dir() -> Path:
    """The kernels' cache folder: asked when layers are built, never per token (each
    :class:`Int8Linear` keeps the kernels it was packed for)."""
    from sepcli.models import cache_dir  # here: sepcli.models imports this module's users

    return cache_dir() / "kernels"


def int4_linear(x: torch.Tensor, layer: Int8Linear) -> torch.Tensor:
    """One token through a layer's 4-bit weight: x [1, in] fp32 -> [1, out] fp32 (plus bias).
    The C kernel where the layer holds its layout, else torch's kernel on bf16 activations."""
    q4 = layer.q4
    if q4 is not None:
        return layer.kernels.q4_matvec(x, q4, torch.get_num_threads())[None]
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(
        x.to(torch.bfloat16), layer.weight_int4, GROUP, layer.int4_scale_zero
    ).float()
    return y if layer.bias is None else y + layer.bias


def torch_int4_pack(
    codes: torch.Tensor, step: torch.Tensor, low: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`exact_int4`'s codes for ``_weight_int4pack_mm_for_cpu``: packed codes and
    [in/32, out, 2] bf16 (scale, zero); the kernel reads (code - 8) * scale + zero, so the
    weight it uses is within bf16 rounding of the original (about 0.4% of a group's step)."""
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32), 1)
    scale_zero = torch.stack((step, low + 8 * step), dim=-1)  # (out, in/32, 2)
    return packed, scale_zero.transpose(0, 1).contiguous().to(torch.bfloat16)


def exact_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """weight [out, in] fp32 -> (codes [out, in] uint8 0..15, step, low [out, in/32] fp32) with
    weight = low + code * step per group of 32 inputs, when it holds exactly 16 evenly spaced
    levels per group, the lowest and highest both used (what GGUF's Q4_1 stores: min + code *
    step); None for any other weight, which 4 bits would round."""
    out, n_in = weight.shape
    if n_in % GROUP or out % 16:  # whole groups; torch's packing takes 16 outputs at a time
        return None
    codes = torch.empty(out, n_in, dtype=torch.uint8)
    step_low = torch.empty(out, n_in // GROUP, 2)
    # A block of rows at a time: an LM head that is not 4-bit fails in its first block, before
    # temporaries the size of its weight pile up.
    for start in range(0, out, _CHECK_ROWS):
        rows = slice(start, start + _CHECK_ROWS)
        groups = weight[rows].reshape(-1, n_in // GROUP, GROUP)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        step = (high - low) / 15
        block = ((groups - low) / step.clamp_min(1e-30)).round_().clamp_(0, 15)
        if ((block * step + low - groups).abs() > 1e-3 * step + 1e-7 * groups.abs()).any():
            return None
        codes[rows] = block.reshape(-1, n_in).to(torch.uint8)
        step_low[rows] = torch.cat((step, low), dim=-1)
    return codes, step_low[..., 0].contiguous(), step_low[..., 1].contiguous()


def _targets(model: nn.Module, head: bool) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(owner, attribute, layer) for every nn.Linear of the decoder layers (and the LM head)."""
    found = []
    for layer in arch.decoder_layers(model):
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                owner, _, attr = name.rpartition(".")
                found.append((layer.get_submodule(owner), attr, module))
    if head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        found.append((model, "lm_head", model.lm_head))
    return found


@torch.inference_mode()
def input_ranges(model: nn.Module, ids: torch.Tensor, layers: list[nn.Linear]) -> list:
    """[in] max |input| per channel of each of ``layers`` over one forward of ids [1, T]."""
    ranges = [torch.zeros(m.in_features) for m in layers]

    def hook(i):
        def record(module, args):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])  # (tokens, in)
            ranges[i] = torch.maximum(ranges[i], x.abs().amax(dim=0).cpu())

        return record

    handles = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return ranges


def quantize_linears(model: nn.Module, tokenizer, head: bool = True) -> int:
    """Swap the decoder layers' nn.Linear modules (and the LM head if ``head``) for
    :class:`Int8Linear`, in place, calibrated on :data:`CALIBRATION_TEXT`. Returns the count."""
    targets = _targets(model, head)
    if not targets:
        raise ModelError("--dtype int8: the model has no linear layers to quantise")
    from sepcli.stream.reader import start_token  # here: sepcli.stream imports this module

    # Led by the stream's start token: its activations (the attention sink's) are the loudest.
    ids = (
        start_token(tokenizer) + tokenizer(CALIBRATION_TEXT, add_special_tokens=False)["input_ids"]
    )
    ids = torch.tensor([ids])  # (1, T)
    ranges = input_ranges(model, ids, [m for _, _, m in targets])
    embedding = arch.backbone(model).embed_tokens.weight
    for (owner, attr, module), act_max in zip(targets, ranges, strict=True):
        quantised = Int8Linear(module, act_max)
        quantised.tied = module.weight is embedding  # an int8 copy of the embedding (LM head)
        setattr(owner, attr, quantised)
    _own_what_stays_fp32(model)
    return len(targets)


@torch.no_grad()
def _own_what_stays_fp32(model: nn.Module) -> None:
    """Copy the tensors that stay fp32 (embeddings, norms) out of the loaded checkpoint's memory
    map: while any of them points into it, the map of every fp32 weight stays resident (~540 MB
    for the embedded model), though the int8 layers no longer read it."""
    from sepcli.memory import return_freed_memory

    for module in model.modules():
        if isinstance(module, Int8Linear):
            continue
        for p in module.parameters(recurse=False):
            p.data = p.data.clone()
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None:
                setattr(module, name, buf.clone())
    return_freed_memory()


def is_int8(model: nn.Module) -> bool:
    """True when :func:`quantize_linears` has been applied to ``model``."""
    return any(isinstance(m, Int8Linear) for m in model.modules())


def decode_kernels(model: nn.Module) -> str:
    """What one token at a time (decoding) runs on, in words, for `sepcli info`."""
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    if not layers:
        return "torch"
    kern = cpu_kernels()
    build = "?" if kern is None else kern.isa
    if any(m.q4 is not None for m in layers):
        return f"C kernels ({build}): 4-bit weights, int8 head"
    missing = "" if kern is not None else f" ({cpu_kernels_missing()})"
    if any(m.weight_int4 is not None for m in layers):
        return f"torch's 4-bit kernel{missing}"
    return f"C int8 kernels ({build})" if kern is not None else f"torch int8{missing}"


def int8_weights(model: nn.Module) -> int:
    """Weights held in int8, which ``model.parameters()`` does not list; an LM head tied to the
    embedding is counted once, as in the fp32 model."""
    return sum(
        m.in_features * m.out_features
        for m in model.modules()
        if isinstance(m, Int8Linear) and not m.tied
    )
