"""The streaming engine against independent references: plain HF perplexity when nothing is
evicted, and a deliberately naive token-by-token implementation for every method."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sepcli.errors import ConfigError, ContextLimitError
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essays_text

from helpers import SHARP, hf_nll, run_engine
from naive import NaiveRing


@pytest.fixture(scope="module")
def text_ids(tokenizer):
    """A few hundred real tokens (with plenty of separators), BOS first."""
    ids = tokenizer(essays_text(max_chars=3000), add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + ids[:400]


# ---------------------------------------------------------------------- the naive reference


def naive_nll(model, ids, method, a, s, w, c, sep_ids, official=False):
    """Per-token NLL of ids[1:] under the naive cache of :mod:`tests.naive` (``official``: the
    official loops' eviction timing, see :class:`tests.naive.NaiveRing`)."""
    ring = NaiveRing(model, method, a, s, w, c, sep_ids, official=official)
    out, prev_logits = [], None
    for tok in ids:
        if prev_logits is not None:
            out.append(F.cross_entropy(prev_logits[None], torch.tensor([tok])))
        prev_logits = ring.step(tok)
    return torch.stack(out)


def assert_cache_means_match(stats, after1):
    """cache_mean of each chunk = the mean cache size its tokens saw fed one at a time
    (``after1[seen]``: entries in the cache right after token seen-1, itself included)."""
    for st in stats:
        want = sum(after1[t] for t in range(st.seen - st.tokens + 1, st.seen + 1)) / st.tokens
        assert st.cache_mean == pytest.approx(want)


# ---------------------------------------------------------------------- tests


@torch.inference_mode()
def test_no_eviction_equals_plain_hf_perplexity(tiny_llama, seps, text_ids):
    model = tiny_llama(
        layers=2, hidden=64, heads=4, kv_heads=2, max_positions=512, initializer_range=SHARP
    )
    ids = text_ids[:200]
    ref = hf_nll(model, ids)
    for chunk in (1, 48):
        cfg = StreamConfig(init=4, sep=8, window=64, capacity=512, chunk=chunk)
        _, nll, _ = run_engine(model, cfg, seps, ids)
        assert nll.shape == ref.shape
        ppl, ref_ppl = math.exp(nll.mean()), math.exp(ref.mean())
        assert abs(ppl - ref_ppl) / ref_ppl < 1e-4
        torch.testing.assert_close(nll, ref, rtol=1e-4, atol=1e-4)


@torch.inference_mode()
@pytest.mark.parametrize("method", ["sepllm", "streamingllm", "window", "full"])
def test_chunk1_equals_naive_reference_with_many_wraparounds(
    tiny_llama, seps, text_ids, tokenizer, method
):
    model = tiny_llama(
        layers=2, hidden=48, heads=6, kv_heads=2, seed=3, max_positions=512, initializer_range=SHARP
    )
    ids = text_ids[:210]
    a, s, w, c = 2, 4, 8, 20
    if method == "full":
        c = 512
    cfg = StreamConfig(method=method, init=a, sep=s, window=w, capacity=c, chunk=1)
    engine, nll, stats = run_engine(model, cfg, seps, ids)
    sep_ids = set(torch.nonzero(seps).squeeze(-1).tolist())
    assert sum(tok in sep_ids for tok in ids) > 30  # the text exercises the separator region
    ref = naive_nll(model, ids, method, a, s, w, c, sep_ids)
    torch.testing.assert_close(nll, ref, rtol=1e-4, atol=1e-4)
    assert max(st.cache_used for st in stats) <= engine.capacity
    if method != "full":
        assert len(ids) > 10 * c  # the ring wrapped around many times


@torch.inference_mode()
@pytest.mark.parametrize("method", ["sepllm", "streamingllm", "window"])
def test_capacity_c_plus_one_equals_the_official_loops_at_c(tiny_llama, seps, text_ids, method):
    """docs/stream.md: the official loops' c is sepcli's --capacity c + 1 (the ring holds the
    token being processed too), checked against a naive loop in the official timing, with the
    default chunk and with many compressions/evictions; --capacity c itself differs."""
    model = tiny_llama(
        layers=2,
        hidden=48,
        heads=6,
        kv_heads=2,
        seed=11,
        max_positions=512,
        initializer_range=SHARP,
    )
    ids = text_ids[:240]
    a, s, w, c = 2, 4, 8, 24  # official c; a + s + w < c
    sep_ids = set(torch.nonzero(seps).squeeze(-1).tolist())
    ref = naive_nll(model, ids, method, a, s, w, c, sep_ids, official=True)
    for chunk in (1, 8):
        cfg = StreamConfig(method=method, init=a, sep=s, window=w, capacity=c + 1, chunk=chunk)
        engine, nll, _ = run_engine(model, cfg, seps, ids)
        torch.testing.assert_close(nll, ref, rtol=1e-4, atol=1e-4)
        assert engine.config.paper_c == c
    same_c = StreamConfig(method=method, init=a, sep=s, window=w, capacity=c, chunk=1)
    _, nll_c, _ = run_engine(model, same_c, seps, ids)
    assert not torch.allclose(nll_c, ref, rtol=1e-3, atol=1e-3)  # one slot less: another run
    assert len(ids) > 8 * c  # many compressions / evictions


@torch.inference_mode()
@pytest.mark.parametrize(
    "sizes,chunk",
    [
        (dict(init=2, sep=4, window=8, capacity=20), 3),
        (dict(init=2, sep=4, window=8, capacity=20), 8),
        # room after a compression is down to 1 slot: a chunk spans many compressions
        (dict(init=1, sep=2, window=12, capacity=16), 12),
    ],
)
def test_chunked_sepllm_equals_token_by_token(tiny_llama, seps, text_ids, sizes, chunk):
    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=5, initializer_range=SHARP)
    ids = text_ids[:200]
    cfg1 = StreamConfig(chunk=1, **sizes)
    cfgn = StreamConfig(chunk=chunk, **sizes)
    _, nll1, stats1 = run_engine(model, cfg1, seps, ids)
    _, nlln, stats = run_engine(model, cfgn, seps, ids)
    torch.testing.assert_close(nlln, nll1, rtol=1e-5, atol=1e-5)
    assert max(s.tokens for s in stats) == chunk
    assert max(s.steps for s in stats) > 1  # compressions fell inside chunks
    # the cache state after each chunk is the one token-by-token feeding reaches there
    after1 = {s.seen: s.cache_used for s in stats1}
    assert all(after1[s.seen] == s.cache_used for s in stats)
    assert_cache_means_match(stats, after1)


@torch.inference_mode()
@pytest.mark.parametrize(
    "method,sizes,chunk",
    [
        ("streamingllm", dict(init=2, capacity=20), 5),
        ("streamingllm", dict(init=2, capacity=20), 18),  # chunk = capacity - init
        ("streamingllm", dict(init=3, capacity=12, window=8), 7),  # sinks inside the first chunk
        ("window", dict(capacity=20), 13),
        ("window", dict(capacity=16, window=16), 16),
    ],
)
def test_chunked_sliding_methods_equal_token_by_token(
    tiny_llama, seps, text_ids, method, sizes, chunk
):
    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=11, initializer_range=SHARP)
    ids = text_ids[:150]
    _, nll1, stats1 = run_engine(model, StreamConfig(method=method, chunk=1, **sizes), seps, ids)
    _, nlln, stats = run_engine(model, StreamConfig(method=method, chunk=chunk, **sizes), seps, ids)
    torch.testing.assert_close(nlln, nll1, rtol=1e-5, atol=1e-5)
    after1 = {s.seen: s.cache_used for s in stats1}
    assert all(after1[s.seen] == s.cache_used for s in stats)
    assert max(s.cache_peak for s in stats) == sizes["capacity"]
    assert_cache_means_match(stats, after1)


@torch.inference_mode()
def test_cache_never_exceeds_capacity_and_stays_above_the_floor(tiny_llama, seps, text_ids):
    model = tiny_llama(layers=1, hidden=32, heads=2, kv_heads=1)
    cfg = StreamConfig(init=4, sep=8, window=16, capacity=40, chunk=16)
    engine, _, stats = run_engine(model, cfg, seps, text_ids)
    used = [s.cache_used for s in stats]
    assert max(s.cache_peak for s in stats) == 40
    assert max(used) <= 40
    assert min(used[10:]) > cfg.init + cfg.window  # compression keeps init + window (+ seps)


@torch.inference_mode()
def test_ring_buffers_are_allocated_once(tiny_llama, seps, text_ids):
    """A stream ten times the capacity wraps the ring many times; its K/V buffers stay the
    ones allocated by the constructor (same storage, same shape), and the stream's keys and
    values were written into them, not into a replacement."""
    model = tiny_llama(layers=2, hidden=32, heads=2, kv_heads=1)
    cfg = StreamConfig(init=4, sep=8, window=16, capacity=40, chunk=16)
    assert len(text_ids) >= 10 * cfg.capacity
    engine = StreamEngine(model, cfg, seps)
    ring = engine.ring
    before = [(t.data_ptr(), tuple(t.shape)) for t in (ring.k, ring.v)]
    assert before[0][1][3] == cfg.capacity  # [layers, 1, Hkv, capacity, D]
    list(engine.run([text_ids]))
    assert engine.ring is ring
    assert [(t.data_ptr(), tuple(t.shape)) for t in (ring.k, ring.v)] == before
    kept = ring.kept_slots()
    assert kept.numel() > cfg.init + cfg.window
    for buf in (ring.k, ring.v):
        assert buf[:, :, :, kept].abs().sum(-1).gt(0).all()  # every kept slot holds data


@torch.inference_mode()
def test_full_refuses_past_the_context(tiny_llama, seps, text_ids):
    model = tiny_llama(layers=1, hidden=32, heads=2, kv_heads=1, max_positions=64)
    engine = StreamEngine(model, StreamConfig(method="full", chunk=16), seps)
    with pytest.raises(ContextLimitError, match="context of 64"):
        list(engine.run([text_ids[:100]]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"capacity": 292}, "must be larger than"),
        ({"init": -1}, "init"),
        ({"chunk": 300}, "larger than --window"),
        ({"chunk": 0}, "chunk"),
        ({"method": "magic"}, "unknown method"),
        ({"method": "streamingllm", "init": 4, "capacity": 4, "chunk": 1}, "sink"),
    ],
)
def test_bad_configs_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        StreamConfig(**kwargs)


@torch.inference_mode()
@pytest.mark.parametrize("method", ["sepllm", "streamingllm"])
def test_transformers_cache_adapter_matches_the_engine(tiny_llama, seps, text_ids, method):
    from sepcli.stream.hf_cache import SepLLMCache

    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=9, initializer_range=SHARP)
    ids = text_ids[:200]
    cfg = StreamConfig(method=method, init=2, sep=4, window=16, capacity=32, chunk=8)
    _, ref, _ = run_engine(model, cfg, seps, ids)
    cache = SepLLMCache(model, cfg, seps)
    rows = []
    for i in range(0, len(ids), cfg.chunk):
        for step in cache.steps(torch.tensor([ids[i : i + cfg.chunk]])):
            rows.append(model(step, cache=cache).logits[0].float())
    logits = torch.cat(rows)
    nll = F.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none")
    assert cache.ring.used <= 32 and cache.seen == len(ids)
    torch.testing.assert_close(nll, ref, rtol=1e-4, atol=1e-4)


def test_the_method_table_names_every_method_class():
    """--method lists sepcli.stream.methods.METHODS without importing the classes (torch):
    every Method subclass in the package is in the table, under its own name."""
    import importlib
    import pkgutil

    import sepcli.stream.methods as methods
    from sepcli.stream.methods import METHODS, method_class
    from sepcli.stream.methods.base import Method

    found = {}
    for info in pkgutil.iter_modules(methods.__path__):
        module = importlib.import_module(f"{methods.__name__}.{info.name}")
        for obj in vars(module).values():
            # a class that names itself is a method; the others are shared bases
            if (
                isinstance(obj, type)
                and issubclass(obj, Method)
                and obj is not Method
                and "name" in vars(obj)
            ):
                found[obj.name] = obj
    assert sorted(found) == sorted(METHODS) == ["full", "sepllm", "streamingllm", "window"]
    for name, cls in found.items():
        assert method_class(name) is cls


def test_default_chunk_is_capped_by_the_window():
    from sepcli.stream.config import DEFAULT_CHUNK

    assert StreamConfig().chunk == min(DEFAULT_CHUNK, StreamConfig().window)
    assert StreamConfig(window=100, capacity=200).chunk == 100
    assert StreamConfig(chunk=7).chunk == 7


def test_compression_keeps_every_separator_while_fewer_than_sep():
    from sepcli.stream.methods.sepllm import SepLLM
    from sepcli.stream.ring import RingKV

    cfg = StreamConfig(init=2, sep=8, window=4, capacity=20, chunk=1)
    ring = RingKV(1, 1, 2, 20, device="cpu", dtype=torch.float32)
    text = torch.arange(20)
    is_sep = torch.zeros(20, dtype=torch.bool)
    is_sep[[3, 5, 7, 9, 12, 17]] = True  # 17 is inside the local window (16..19)
    ring.claim(text, is_sep)
    SepLLM(cfg).compress(ring)
    kept = sorted(ring.text_idx[ring.kept_slots()].tolist())
    assert kept == [0, 1, 3, 5, 7, 9, 12, 16, 17, 18, 19]  # all 5 separators: 5 < sep = 8
    # more separators than `sep`: only the newest `sep` stay
    cfg = StreamConfig(init=2, sep=2, window=4, capacity=20, chunk=1)
    ring = RingKV(1, 1, 2, 20, device="cpu", dtype=torch.float32)
    ring.claim(text, is_sep)
    SepLLM(cfg).compress(ring)
    assert sorted(ring.text_idx[ring.kept_slots()].tolist()) == [0, 1, 9, 12, 16, 17, 18, 19]
    # the naive reference of the tests above had the same slicing slip; this case pins it
