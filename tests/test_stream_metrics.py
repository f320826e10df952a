"""Perplexity reporting at the edge of a float: a random-weight model's mean NLL can pass
log(max float) ~ 709.78, where math.exp overflows."""

import math

from sepcli.stream.engine import ChunkStats
from sepcli.stream.metrics import MAX_NLL, RunMetrics, perplexity


def test_perplexity_is_exp_below_the_cap_and_capped_above():
    assert perplexity(2.0) == math.exp(2.0)
    assert perplexity(800.0) == math.exp(MAX_NLL)


def test_run_metrics_report_a_huge_nll_without_overflow():
    m = RunMetrics(capacity=8)
    fields = {f: 0 for f in ChunkStats.__dataclass_fields__}
    m.update(ChunkStats(**{**fields, "tokens": 4, "scored": 4, "nll_sum": 4 * 750.0}))
    assert m.ppl == math.exp(MAX_NLL) and m.recent_ppl == math.exp(MAX_NLL)
