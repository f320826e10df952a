"""Calibration for the int8 path: a short fixed text, and the largest input each linear layer
sees on it (SmoothQuant's max|x_j|)."""

from __future__ import annotations

import torch
from torch import nn

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
