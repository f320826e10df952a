"""The int8 linear layer (:class:`Int8Linear`) and its one-token 4-bit product."""

from __future__ import annotations

import torch
from torch import nn

from sepcli.kernels.cpu import Q4Weight, pack_q4, q4_layout_fits
from sepcli.quant import c_kernels
from sepcli.quant.int4 import GROUP, exact_int4, torch_int4_pack

ALPHA = 0.5  # SmoothQuant migration strength: half of the outlier range moves to the weights


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
        w = linear.weight.detach()  # (out, in)
        smooth = act_max.float().clamp_min(1e-5) ** alpha
        smooth = (smooth / _column_max(w).clamp_min(1e-5) ** (1 - alpha)).clamp_min(1e-5)
        self.register_buffer("inv_smooth", 1.0 / smooth)  # (in,)
        # Stored [out, in] and used transposed: the layout oneDNN's int8 GEMM reads fastest
        # for one token at a time, and as fast as [in, out] for a chunk.
        q = torch.empty(w.shape, dtype=torch.int8)
        scale = torch.empty(w.shape[0])
        for rows in _row_blocks(w):  # fp32 temporaries of a block of rows, not of the weight
            ws = w[rows].float() * smooth  # x W^T == (x / s)(W s)^T
            scale[rows] = (ws.abs().amax(dim=1) / 127).clamp_min(1e-12)  # (rows,)
            q[rows] = torch.round(ws / scale[rows, None]).to(torch.int8)
        self.register_buffer("weight_int8", q)
        self.register_buffer("weight_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)
        # 4-bit copy for one token: decode.c's layout where the C kernels load, else torch's
        kern, int4 = (
            c_kernels.cpu_kernels(),
            exact_int4(w.float() if w.dtype != torch.float32 else w),
        )
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
        sums = None if kern is None or native else _row_sums(self.weight_int8)
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


def _row_blocks(w: torch.Tensor, elements: int = 1 << 20):
    """Slices of rows of ``w`` holding about ``elements`` weights each."""
    step = max(1, elements // max(1, w.shape[1]))
    return [slice(r, r + step) for r in range(0, w.shape[0], step)]


def _row_sums(q: torch.Tensor) -> torch.Tensor:
    """[out] int32 sum of each row of an int8 weight, a block of rows at a time (a sum in int32
    casts its input: the whole weight would be copied 4x its size)."""
    out = torch.empty(q.shape[0], dtype=torch.int32)
    for rows in _row_blocks(q):
        out[rows] = q[rows].sum(dim=1, dtype=torch.int32)
    return out


def _column_max(w: torch.Tensor) -> torch.Tensor:
    """[in] max |w| per input channel, a block of rows at a time."""
    out = torch.zeros(w.shape[1])
    for rows in _row_blocks(w):
        out = torch.maximum(out, w[rows].float().abs().amax(dim=0))
    return out


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
