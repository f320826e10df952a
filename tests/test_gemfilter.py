"""GemFilter library: the filter pass against HF's eager attention, early exit, selection,
prompt layout, and the k >= n equivalence with full attention (tiny seeded Llamas, CPU)."""

from __future__ import annotations

import json

import pytest
import torch

from sepcli.errors import ConfigError, ContextLimitError, InputError
from sepcli.gemfilter import calibrate as cal
from sepcli.gemfilter import pipeline
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.filter import filter_scores, layer_scores
from sepcli.gemfilter.needles import NEEDLES, make_case
from sepcli.gemfilter.pipeline import Result, answer_text, prepare, run_qa
from sepcli.gemfilter.prompt import build_prompt
from sepcli.gemfilter.segments import plan, segment_bounds, split_scores
from sepcli.gemfilter.selection import smooth_scores, top_spans, top_tokens


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4)])
def test_filter_scores_equal_eager_last_row_summed_over_heads(tiny_llama, heads, kv_heads):
    model = tiny_llama(
        layers=4, hidden=96, heads=heads, kv_heads=kv_heads, seed=3, attn_implementation="eager"
    )
    ids = torch.randint(0, 5000, (93,), generator=torch.Generator().manual_seed(0))
    ref = model(ids[None], output_attentions=True).attentions  # per layer [1, Hq, T, T]
    for r in range(4):
        naive = ref[r][0, :, -1, :].sum(0)  # (T,)
        ours = filter_scores(model, ids, r)
        torch.testing.assert_close(ours, naive, rtol=1e-4, atol=1e-6)
        k = 17
        assert set(top_tokens(ours, k).tolist()) == set(naive.topk(k).indices.tolist())


def test_the_filter_rotates_keys_as_the_model_does_in_bf16(tiny_llama):
    """The filter pass runs the model's own first layers, so in bf16 its RoPE rounds as the
    model's forward does (tables cast to bf16): layer 0's keys equal the model's cached keys
    bit for bit (rotating in fp32 instead differs by ~2e-3 and moves bf16 selections)."""
    from sepcli.gemfilter.prefix import prefix_steps

    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=5).to(torch.bfloat16)
    ids = torch.randint(0, 5000, (37,), generator=torch.Generator().manual_seed(4))
    cache = model(ids[None], use_cache=True).cache
    keys, _ = next(prefix_steps(model, ids, 2, 1))  # layer 0's post-RoPE keys [1, Hkv, P, D]
    assert keys.dtype == torch.bfloat16
    assert torch.equal(keys, cache.layers[0].keys)


def test_window_scores_equal_eager_rows_summed(tiny_llama):
    """window W: the last W rows of eager attention (causal) summed over rows and heads."""
    model = tiny_llama(
        layers=3, hidden=96, heads=6, kv_heads=3, seed=6, attn_implementation="eager"
    )
    ids = torch.randint(0, 5000, (61,), generator=torch.Generator().manual_seed(2))
    ref = model(ids[None], output_attentions=True).attentions
    for w in (1, 7, 61):
        for r in range(3):
            naive = ref[r][0, :, -w:, :].sum((0, 1))  # (T,)
            torch.testing.assert_close(
                filter_scores(model, ids, r, window=w), naive, rtol=1e-4, atol=1e-5
            )


def test_one_pass_gives_every_layer_the_same_scores(tiny_llama):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=1)
    ids = torch.randint(0, 5000, (1, 40), generator=torch.Generator().manual_seed(1))
    together = dict(layer_scores(model, ids, range(3), window=5))
    for r in range(3):
        torch.testing.assert_close(together[r][0], filter_scores(model, ids[0], r, window=5))


def test_layers_above_the_filter_layer_are_never_called(tiny_llama):
    model = tiny_llama(layers=5, hidden=64, heads=4, kv_heads=2, seed=2)
    calls: dict[tuple[int, str], list[int]] = {}
    for i, layer in enumerate(model.model.layers):
        mods = {
            "norm": layer.input_layernorm,
            "q": layer.self_attn.q_proj,
            "k": layer.self_attn.k_proj,
            "v": layer.self_attn.v_proj,
            "o": layer.self_attn.o_proj,
            "mlp": layer.mlp,
            "layer": layer,
        }
        for name, mod in mods.items():
            mod.register_forward_hook(
                lambda m, args, out, key=(i, name): calls.setdefault(key, []).append(
                    args[0].shape[-2]
                )
            )
    model.lm_head.register_forward_hook(lambda *a: calls.setdefault((-1, "lm_head"), []).append(0))
    r, t = 2, 30
    filter_scores(model, torch.arange(t), r, window=4)
    for i in range(r):  # full layers below r, each exactly once over all tokens
        for name in ("norm", "q", "k", "v", "o", "mlp"):
            assert calls[(i, name)] == [t], (i, name)
    assert calls[(r, "norm")] == [t] and calls[(r, "k")] == [t]
    assert calls[(r, "q")] == [4]  # only the query window's tokens
    for name in ("v", "o", "mlp"):
        assert (r, name) not in calls
    assert not any(i > r for i, _ in calls)
    assert (-1, "lm_head") not in calls
    assert not any(name == "layer" for _, name in calls)  # HF's layer.forward is never used


def test_top_tokens_keeps_topk_in_document_order_and_protects():
    scores = torch.tensor([0.1, 5.0, 0.2, 3.0, 0.0, 4.0, 0.3])
    assert top_tokens(scores, 3).tolist() == [1, 3, 5]
    assert top_tokens(scores, 100).tolist() == list(range(7))
    keep = torch.tensor([False] * 5 + [True, True])
    assert top_tokens(scores, 3, keep=keep).tolist() == [
        1,
        2,
        3,
        5,
        6,
    ]  # k counts unprotected tokens
    smoothed = smooth_scores(torch.tensor([0.0, 3.0, 0.0]), 3)
    torch.testing.assert_close(smoothed, torch.tensor([1.5, 1.0, 1.5]))


def test_prompt_puts_document_first_question_last(tokenizer):
    p = build_prompt(tokenizer, "Alpha beta gamma.", "What comes after beta?")
    assert tokenizer.decode(p.ids[p.doc_start : p.doc_end]) == "Alpha beta gamma."
    text = tokenizer.decode(p.ids)
    assert text.index("Alpha beta gamma.") < text.index("What comes after beta?")
    assert text.rstrip().endswith("assistant")  # generation prompt is the tail
    assert p.tokens_of_chars(6, 10) == [p.doc_start + 1]  # " beta"
    assert p.window(None) == p.n - p.doc_end and p.window(3) == 3 and p.window(10**6) == p.n
    with pytest.raises(InputError):
        build_prompt(tokenizer, "   ", "q")
    with pytest.raises(InputError):
        build_prompt(tokenizer, "doc", " ")
    with pytest.raises(ContextLimitError, match="context is 20"):
        build_prompt(tokenizer, "word " * 50, "q", context_length=20)


def test_config_rejects_bad_values():
    for bad in (
        {"topk": 0},
        {"layer": -1},
        {"method": "fast"},
        {"smooth": 4},
        {"max_new_tokens": 0},
        {"temperature": -1.0},
        {"temperature": float("nan")},
    ):
        with pytest.raises(ConfigError):
            QAConfig(**bad)
    with pytest.raises(ConfigError, match="numbered 0..3"):
        QAConfig(layer=4).check_layer(4)


def test_k_at_least_n_answers_exactly_like_full_attention(tiny_llama, tokenizer):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=5)
    doc = "The cat sat on the mat. The dog slept by the door. Rain fell all night."
    q = "Where did the dog sleep?"
    full = answer_text(model, tokenizer, doc, q, QAConfig(method="full", max_new_tokens=12))
    gem = answer_text(
        model,
        tokenizer,
        doc,
        q,
        QAConfig(method="gemfilter", layer=1, topk=10_000, max_new_tokens=12),
    )
    assert gem.selected_tokens == gem.prompt_tokens == full.prompt_tokens
    assert full.new_tokens > 0
    assert gem.answer == full.answer and gem.new_tokens == full.new_tokens
    # and a real reduction answers from fewer tokens
    small = answer_text(
        model, tokenizer, doc, q, QAConfig(method="gemfilter", layer=1, topk=5, max_new_tokens=4)
    )
    assert small.selected_tokens < small.prompt_tokens


def test_needle_case_places_needle_at_depth(tokenizer):
    nd = NEEDLES[1]
    for depth in (0.0, 0.5, 1.0):
        case = make_case(tokenizer, nd, 300, depth)
        s, e = case.needle_chars
        assert case.document[s:e] == nd.sentence
        n_tok = len(tokenizer(case.document, add_special_tokens=False)["input_ids"])
        assert 270 <= n_tok <= 310
        assert abs(s / len(case.document) - depth) < 0.25
    assert case.is_correct("It is MARMALADE.") and not case.is_correct("jam")


def test_calibration_measures_stores_and_resolves_auto(
    tiny_llama, tokenizer, tmp_path, monkeypatch
):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=4, max_positions=512)
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path))
    assert cal.auto_layer(model, "tiny", "/x/tiny") == (cal.fallback_layer(3), "fallback")
    cases = cal.calibration_cases(tokenizer, 512, lengths=[120, 200], depths=(0.2, 0.8), needles=2)
    events = list(cal.measure(model, tokenizer, cases, topk=32))
    curve = events[-1]
    assert [e.done for e in events[:-1]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert curve.cases == 8 and len(curve.hits) == 3
    assert all(0.0 <= curve.recall(r) <= 1.0 for r in range(3))
    path = cal.save("tiny", "/x/tiny", curve)
    assert path.parent == tmp_path / "calibration" and not list(path.parent.glob("*.tmp"))
    assert cal.auto_layer(model, "tiny", "/x/tiny") == (curve.best(), "calibrated")
    path.write_text("{broken")
    assert cal.auto_layer(model, "tiny", "/x/tiny")[1] == "fallback"


def test_auto_layer_prefers_calibration_then_measured_then_fallback(
    tiny_llama, tokenizer, tmp_path, monkeypatch
):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=4, max_positions=512)
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cal, "MEASURED_LAYERS", {"shipped": 1, "too-deep": 7})
    assert cal.auto_layer(model, "shipped", "/x/s") == (1, "measured")
    assert cal.auto_layer(model, "too-deep", "/x/d") == (cal.fallback_layer(3), "fallback")
    cases = cal.calibration_cases(tokenizer, 512, lengths=[120], depths=(0.5,), needles=1)
    curve = list(cal.measure(model, tokenizer, cases, topk=32))[-1]
    cal.save("shipped", "/x/s", curve)
    assert cal.auto_layer(model, "shipped", "/x/s") == (curve.best(), "calibrated")


def test_calibration_by_whole_sentences(tiny_llama, tokenizer, tmp_path, monkeypatch):
    """A sentence hit needs every needle token kept: with k over the document every layer hits;
    with k below the needle's length none can. The stored record says which rule judged."""
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=4, max_positions=512)
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path))
    cases = cal.calibration_cases(tokenizer, 512, lengths=[120, 200], depths=(0.2, 0.8), needles=2)
    every = list(cal.measure(model, tokenizer, cases, topk=400, unit="sentence"))[-1]
    assert every.hits == [len(cases)] * 3 and all(every.recall(r) == 1.0 for r in range(3))
    shortest = min(
        len(build_prompt(tokenizer, c.document, c.question).tokens_of_chars(*c.needle_chars))
        for c in cases
    )
    none = list(cal.measure(model, tokenizer, cases, topk=shortest - 1, unit="sentence"))[-1]
    assert none.hits == [0, 0, 0] and none.unit == "sentence"
    assert max(none.recall(r) for r in range(3)) > 0  # a cut sentence still counts as recall
    record = json.loads(cal.save("tiny", "/x/tiny", none).read_text())
    assert record["unit"] == "sentence"
    with pytest.raises(ConfigError, match="--unit must be one of"):
        list(cal.measure(model, tokenizer, cases, topk=8, unit="word"))


def test_segment_bounds_are_the_fewest_equal_pieces_within_budget():
    for length in (1, 7, 100, 255, 256, 257, 1000, 4099):
        for budget in (1, 3, 64, 256, 5000):
            bounds = segment_bounds(length, budget)
            assert bounds[0][0] == 0 and bounds[-1][1] == length
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
            sizes = [e - s for s, e in bounds]
            assert max(sizes) <= budget and min(sizes) >= 1
            assert len(bounds) == -(-length // budget)  # no fewer pieces could fit
            assert max(sizes) - min(sizes) <= 1
    assert segment_bounds(0, 10) == []


def _long_prompt(tokenizer, words: int):
    doc = " ".join(f"w{i % 97}." if i % 11 == 0 else f"w{i % 89}" for i in range(words))
    return build_prompt(tokenizer, doc, "Which word comes after w3?")


def test_split_scores_equal_eager_attention_per_segment(tiny_llama, tokenizer):
    """A prompt ~3x the context: every segment's scores are eager attention of the question rows
    over [head + segment + tail], and the template/question scores are the mean over segments."""
    model = tiny_llama(
        layers=3,
        hidden=64,
        heads=4,
        kv_heads=2,
        seed=9,
        max_positions=256,
        attn_implementation="eager",
    )
    prompt = _long_prompt(tokenizer, 300)
    assert prompt.n > 2 * 256
    bounds = plan(prompt, 256)
    assert len(bounds) >= 3
    w = prompt.window(None)
    head, tail = prompt.ids[: prompt.doc_start], prompt.ids[prompt.doc_end :]
    for r in range(3):
        ours = split_scores(model, prompt, r, w, bounds)
        outside = []
        for s, e in bounds:
            ids = torch.cat([head, prompt.ids[prompt.doc_start + s : prompt.doc_start + e], tail])
            assert ids.numel() <= 256
            att = model(ids[None], output_attentions=True).attentions[r][0]  # [Hq, T, T]
            naive = att[:, -w:, :].sum((0, 1))
            h = head.numel()
            torch.testing.assert_close(
                ours[prompt.doc_start + s : prompt.doc_start + e],
                naive[h : h + e - s],
                rtol=1e-4,
                atol=1e-5,
            )
            outside.append(torch.cat([naive[:h], naive[h + e - s :]]))
        mean = torch.stack(outside).mean(0)
        torch.testing.assert_close(
            torch.cat([ours[: prompt.doc_start], ours[prompt.doc_end :]]),
            mean,
            rtol=1e-4,
            atol=1e-5,
        )


def test_one_segment_is_the_plain_filter_pass(tiny_llama, tokenizer):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=9, max_positions=512)
    prompt = _long_prompt(tokenizer, 60)
    assert plan(prompt, 512) == [(0, prompt.doc_end - prompt.doc_start)]
    w = prompt.window(None)
    torch.testing.assert_close(
        split_scores(model, prompt, 2, w, plan(prompt, 512)), filter_scores(model, prompt.ids, 2, w)
    )


def test_a_prompt_built_beforehand_is_not_built_again(tiny_llama, tokenizer, monkeypatch):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=5)
    doc = "The cat sat on the mat. The dog slept by the door. Rain fell all night."
    q = "Where did the dog sleep?"
    cfg = QAConfig(layer=1, topk=6, max_new_tokens=6, unit="token")
    plain = answer_text(model, tokenizer, doc, q, cfg)
    prompt = prepare(model, tokenizer, doc, q, cfg)
    built = []
    real = pipeline.build_prompt
    monkeypatch.setattr(pipeline, "build_prompt", lambda *a: built.append(a) or real(*a))
    events = list(run_qa(model, tokenizer, doc, q, cfg, prompt))
    assert built == []
    reused = events[-1]
    assert isinstance(reused, Result) and reused.ttft_s >= prompt.build_s > 0
    assert (reused.answer, reused.selected_tokens) == (plain.answer, plain.selected_tokens)
    list(run_qa(model, tokenizer, doc, q, cfg))  # without it, the prompt is built
    assert len(built) == 1


def test_a_document_over_the_context_is_filtered_in_segments_and_answered(tiny_llama, tokenizer):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=9, max_positions=256)
    prompt = _long_prompt(tokenizer, 300)
    doc, q = prompt.document, "Which word comes after w3?"
    cfg = QAConfig(layer=1, topk=64, max_new_tokens=3, unit="token")
    res = answer_text(model, tokenizer, doc, q, cfg)
    assert res.segments == len(plan(prompt, 256)) >= 3 and res.prompt_tokens == prompt.n
    assert res.selected_tokens == prompt.n - (prompt.doc_end - prompt.doc_start) + 64
    assert res.new_tokens > 0
    with pytest.raises(ContextLimitError, match="context is 256"):
        answer_text(model, tokenizer, doc, q, QAConfig(layer=1, topk=64, split=False))
    with pytest.raises(ContextLimitError, match="context is 256"):
        answer_text(model, tokenizer, doc, q, QAConfig(method="full"))
    fixed = prompt.n - (prompt.doc_end - prompt.doc_start)
    with pytest.raises(ConfigError, match=f"--topk {256 - fixed} or less"):
        answer_text(model, tokenizer, doc, q, QAConfig(layer=1, topk=256 - fixed + 1))
    with pytest.raises(ContextLimitError, match="ask a shorter question"):
        answer_text(model, tokenizer, doc, "why " * 300, QAConfig(layer=1, topk=8))


def test_segment_tokens_caps_every_filter_pass(tiny_llama, tokenizer):
    prompt = _long_prompt(tokenizer, 60)
    doc_len = prompt.doc_end - prompt.doc_start
    assert plan(prompt, 512, segment_tokens=doc_len) == [(0, doc_len)]
    third = -(-doc_len // 3)
    bounds = plan(prompt, 512, segment_tokens=third)
    assert len(bounds) == 3 and max(e - s for s, e in bounds) <= third
    # over the context, the tighter of the two limits wins
    long = _long_prompt(tokenizer, 300)
    room = 256 - (long.n - (long.doc_end - long.doc_start))
    assert len(plan(long, 256, segment_tokens=10**6)) == len(plan(long, 256))
    assert max(e - s for s, e in plan(long, 256, segment_tokens=room // 2)) <= room // 2
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=9, max_positions=512)
    q = "Which word comes after w3?"
    res = answer_text(
        model,
        tokenizer,
        prompt.document,
        q,
        QAConfig(layer=1, topk=16, segment_tokens=third, max_new_tokens=2),
    )
    assert res.segments == 3
    assert QAConfig(segment_tokens=0).segment_tokens is None  # the CLI's "as many as fit"
    for bad in ({"segment_tokens": -1}, {"segment_tokens": 8, "split": False}):
        with pytest.raises(ConfigError, match="--segment-tokens"):
            QAConfig(**bad)


def test_sentences_cover_the_document_and_end_at_sentence_marks(tokenizer):
    doc = "One fish. Two fish? Red fish!\nBlue " + "fish " * 100 + "end."
    p = build_prompt(tokenizer, doc, "How many fish?")
    spans = p.sentences(max_tokens=32)
    assert spans[0][0] == p.doc_start and spans[-1][1] == p.doc_end
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    texts = [tokenizer.decode(p.ids[a:b]) for a, b in spans]
    assert texts[:3] == ["One fish.", " Two fish?", " Red fish!"]
    assert max(b - a for a, b in spans) == 32  # the unpunctuated run is cut at the cap
    assert texts[-1].endswith("end.")
    p = build_prompt(tokenizer, "First line.\n\n\nSecond line.\n\nThird.", "Which line?")
    every, content = p.sentences(), p.sentences(blank=False)
    assert set(content) < set(every)
    assert [tokenizer.decode(p.ids[a:b]).strip() for a, b in content] == [
        "First line.",
        "Second line.",
        "Third.",
    ]


def _naive_top_spans(scores, spans, k, keep):
    """Plain-list greedy: best span (by its top score) first, whole spans that still fit."""
    s = scores.tolist()
    units = [list(range(a, b)) for a, b in spans]
    units.sort(key=lambda u: -max(s[i] for i in u))
    out, room = [i for i in range(len(s)) if keep[i]], k
    for u in units:
        if len(u) <= room:
            out += u
            room -= len(u)
    return sorted(out)


def test_top_spans_keeps_whole_sentences_like_a_naive_greedy():
    g = torch.Generator().manual_seed(3)
    for trial in range(30):
        t = 60
        cuts = sorted(set(torch.randint(6, 54, (8,), generator=g).tolist()))
        bounds = [5, *cuts, 55]
        spans = list(zip(bounds[:-1], bounds[1:], strict=True))
        scores = torch.rand(t, generator=g)
        keep = torch.zeros(t, dtype=torch.bool)
        keep[:5] = keep[55:] = trial % 2 == 0  # protected template, or competing tokens
        if trial % 2:
            spans += [(i, i + 1) for i in [*range(5), *range(55, t)]]
        k = int(torch.randint(1, 50, (1,), generator=g))
        got = top_spans(scores, spans, k, keep=keep)
        assert got.tolist() == _naive_top_spans(scores, spans, k, keep.tolist())
        doc = [i for i in got.tolist() if 5 <= i < 55]
        assert len(doc) <= k
        for a, b in spans:  # all or nothing
            assert sum(a <= i < b for i in doc) in (0, b - a)
    scores = torch.zeros(20)
    scores[12] = 5.0  # one hot token pulls in its whole sentence
    got = top_spans(scores, [(0, 8), (8, 15), (15, 20)], 7)
    assert got.tolist() == list(range(8, 15))


def test_sentence_unit_answers_from_whole_sentences(tiny_llama, tokenizer):
    model = tiny_llama(layers=3, hidden=64, heads=4, kv_heads=2, seed=9, max_positions=256)
    doc = "The door is green. " * 6 + "The kite flies in October. " + "Rain fell. " * 30
    q = "When does the kite fly?"
    cfg = QAConfig(layer=1, topk=40, unit="sentence", max_new_tokens=2)
    prompt = build_prompt(tokenizer, doc, q, 256)
    from sepcli.gemfilter.pipeline import filter_prompt

    chosen = filter_prompt(model, prompt, cfg)
    kept = set(chosen.indices.tolist())
    doc_kept = [i for i in kept if prompt.doc_start <= i < prompt.doc_end]
    assert 0 < len(doc_kept) <= 40
    for a, b in prompt.sentences():
        assert all(i in kept for i in range(a, b)) or not any(i in kept for i in range(a, b))
    assert all(i in kept for i in range(prompt.doc_start)) and prompt.n - 1 in kept
    with pytest.raises(ConfigError, match="--unit must be one of"):
        QAConfig(unit="word")
    # k below every sentence's length still keeps the best piece, cut to k tokens
    small = filter_prompt(model, prompt, QAConfig(layer=1, topk=3, unit="sentence"))
    doc_small = [i for i in small.indices.tolist() if prompt.doc_start <= i < prompt.doc_end]
    assert 1 <= len(doc_small) <= 3
