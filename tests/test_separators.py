"""Separator detection on the real tokenizer, merged tokens included."""

from __future__ import annotations

from sepcli.separators import is_separator_text, separator_mask, separator_token_ids


def test_text_rule():
    for text in (".", ",", " .", "\n\n", " \n", "...", "?!", "\t"):
        assert is_separator_text(text), repr(text)
    for text in ("", "a", " the", ".a", "-", "'", "\u00a0"):
        assert not is_separator_text(text), repr(text)


def test_real_tokenizer_merged_separators(tokenizer):
    ids = set(separator_token_ids(tokenizer))
    # Merged runs that the official SepLLM code's hard-coded lists miss: each must be one token
    # here and a separator.
    for text in ("\n\n", " .", " ,", "...", "  "):
        enc = tokenizer(text, add_special_tokens=False).input_ids
        assert len(enc) == 1, (text, enc)
        assert enc[0] in ids, text
    words = tokenizer(" hello world", add_special_tokens=False).input_ids
    assert not ids.intersection(words)
    assert not ids.intersection(tokenizer.all_special_ids)


def test_mask_matches_ids(tokenizer):
    mask = separator_mask(tokenizer)
    assert mask.shape == (len(tokenizer),)
    assert mask.nonzero().squeeze(-1).tolist() == separator_token_ids(tokenizer)
    sentence = tokenizer("Yes. No, maybe?\n\nThen: go!", add_special_tokens=False).input_ids
    flagged = [tokenizer.decode([t]) for t in sentence if mask[t]]
    assert flagged and all(is_separator_text(t) for t in flagged)


def test_reference_list_is_inside_the_rule(tokenizer, monkeypatch):
    """bench/stream.py --separators reference rebuilds the official SepLLM code's hard-coded
    ids; the docs compare the two, which only makes sense if sepcli's rule contains every one."""
    import importlib.util
    from pathlib import Path

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench_dir))  # as `python bench/stream.py` has it
    spec = importlib.util.spec_from_file_location("bench_stream", bench_dir / "stream.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reference = bench.reference_separator_mask(tokenizer)
    rule = separator_mask(tokenizer)
    period = tokenizer(".", add_special_tokens=False).input_ids
    merged = tokenizer("\n\n", add_special_tokens=False).input_ids
    assert reference[period].all() and not reference[merged].any()
    assert not (reference & ~rule).any()
    assert int(rule.sum()) > int(reference.sum()) > 8
