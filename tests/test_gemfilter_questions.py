"""Many questions, one reading: a document's prefix K/V read once (in memory or --doc-cache)
gives every question the kept tokens and the greedy answer of a separate run (tiny seeded
Llamas on CPU, fp32; the one-pass filter of `filter.layer_scores` as the independent reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.errors import DocCacheError
from sepcli.gemfilter import doc_cache
from sepcli.gemfilter.config import QAConfig
from sepcli.gemfilter.filter import filter_scores
from sepcli.gemfilter.pipeline import filter_prompt, prepare
from sepcli.gemfilter.prompt import encode_document
from sepcli.gemfilter.reading import identity, layout, make_reading

from helpers import build_tiny_llama

SEED = 11
runner = CliRunner()
DOC = " ".join(
    f"Note {i}: the {('red', 'blue', 'green')[i % 3]} key opens door {i * 7 % 50}."
    for i in range(40)
)
QUESTIONS = ["Which key opens door 21?", "What does note 12 say?", "How many doors are there?"]


@pytest.fixture(scope="module")
def model(tokenizer):
    print(f"tiny Llama seed {SEED}")
    m = build_tiny_llama(
        len(tokenizer), layers=3, hidden=64, heads=4, kv_heads=2, max_positions=256, seed=SEED
    )
    return m.float().eval()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, model, tokenizer):
    folder = tmp_path_factory.mktemp("tiny-questions")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPCLI_CACHE_DIR", str(tmp_path / "cache"))


def test_a_reading_gives_the_scores_of_a_one_pass_filter(model, tokenizer):
    """Document under the context: the prefix + question passes equal the plain filter pass
    over the whole prompt (computed without any prefix) to rounding, with the same top-k."""
    doc = encode_document(tokenizer, DOC[:450])
    for window in (None, 1, 24):
        cfg = QAConfig(layer=2, topk=12, window=window, unit="token")
        reading = make_reading(model, "tiny", tokenizer, doc, cfg)
        for q in QUESTIONS:
            prompt = prepare(model, tokenizer, doc.text, q, cfg, doc)
            assert prompt.n <= 256
            chosen = filter_prompt(model, prompt, cfg, reading)
            assert chosen.reused and chosen.segments == 1
            one_pass = filter_scores(model, prompt.ids, 2, prompt.window(window))
            torch.testing.assert_close(chosen.scores, one_pass, rtol=1e-5, atol=1e-7)
            fresh = filter_prompt(model, prompt, cfg)
            assert torch.equal(chosen.scores, fresh.scores)  # bit for bit
            assert torch.equal(chosen.indices, fresh.indices)


@pytest.mark.parametrize("segment_tokens", [None, 60])
def test_segments_are_read_once_and_reused_by_every_short_question(
    model, tokenizer, segment_tokens
):
    doc = encode_document(tokenizer, DOC)
    cfg = QAConfig(layer=1, topk=16, segment_tokens=segment_tokens)
    reading = make_reading(model, "tiny", tokenizer, doc, cfg)
    assert len(reading.bounds) >= 3
    for q in [*QUESTIONS[:2], "why " * 60]:  # the last one is longer than the question reserve
        prompt = prepare(model, tokenizer, doc.text, q, cfg, doc)
        chosen = filter_prompt(model, prompt, cfg, reading)
        fresh = filter_prompt(model, prompt, cfg)
        assert chosen.reused == (len(q) < 100 or segment_tokens is not None), q
        assert chosen.segments == fresh.segments
        assert torch.equal(chosen.scores, fresh.scores) and torch.equal(
            chosen.indices, fresh.indices
        )


def test_a_cache_on_disk_round_trips_and_refuses_another_run(model, tokenizer, tmp_path):
    doc = encode_document(tokenizer, DOC)
    cfg = QAConfig(layer=1, topk=16)
    reading = make_reading(model, "tiny", tokenizer, doc, cfg)
    path = tmp_path / "doc.cache"
    doc_cache.save(path, reading)
    head, bounds = layout(model, tokenizer, doc, cfg)
    loaded = doc_cache.load(path, identity(model, "tiny", doc, head, bounds, cfg))
    assert loaded.source == "cache" and loaded.bounds == reading.bounds
    prompt = prepare(model, tokenizer, doc.text, QUESTIONS[0], cfg, doc)
    a, b = filter_prompt(model, prompt, cfg, reading), filter_prompt(model, prompt, cfg, loaded)
    assert b.reused and torch.equal(a.scores, b.scores)
    other_layer = QAConfig(layer=2, topk=16)
    with pytest.raises(DocCacheError, match="layer is 1 there, 2 here"):
        doc_cache.load(path, identity(model, "tiny", doc, head, bounds, other_layer))
    changed = encode_document(tokenizer, DOC + " One more note.")
    h2, b2 = layout(model, tokenizer, changed, cfg)
    with pytest.raises(DocCacheError, match="the document changed"):
        doc_cache.load(path, identity(model, "tiny", changed, h2, b2, cfg))
    other = build_tiny_llama(
        len(tokenizer), layers=3, hidden=64, heads=4, kv_heads=2, max_positions=256, seed=SEED + 1
    ).float()
    with pytest.raises(DocCacheError, match="weights_sha"):
        doc_cache.load(path, identity(other, "tiny", doc, head, bounds, cfg))


def invoke(*args, stdin=None):
    return runner.invoke(app, list(args), input=stdin)


_SEPARATE: dict[tuple, dict] = {}


def _separate(tiny_dir, doc_path, command, q, *extra):
    """A separate run's --json output (memoised: several tests compare with the same run)."""
    key = (tiny_dir, Path(doc_path).read_text(), command, q, extra)
    if key not in _SEPARATE:
        r = invoke(command, doc_path, q, "-m", tiny_dir, *extra, "--json")
        assert r.exit_code == 0, r.output
        _SEPARATE[key] = json.loads(r.stdout)
    return _SEPARATE[key]


ASK = ("--layer", "1", "-k", "16", "--max-new-tokens", "6", "--dtype", "fp32")
FILTER = ("--layer", "1", "-k", "16", "--dtype", "fp32")


@pytest.mark.parametrize("extra", [(), ("--segment-tokens", "70")])
def test_questions_answer_like_separate_runs(tiny_dir, tmp_path, extra):
    """The document is over the 256-token context: split in segments either way."""
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    qfile = tmp_path / "q.txt"
    qfile.write_text(f"{QUESTIONS[0]}\n\n   \n{json.dumps({'question': QUESTIONS[1]})}\n")
    r = invoke("ask", str(doc), "--questions", str(qfile), "-m", tiny_dir, *ASK, *extra)
    assert r.exit_code == 0, r.output
    assert "2 blank line(s)" in r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["question"] for x in lines] == QUESTIONS[:2]
    for line in lines:
        alone = _separate(tiny_dir, str(doc), "ask", line["question"], *ASK, *extra)
        assert line["reading_reused"] is True and line["segments"] == alone["segments"] >= 3
        for key in ("answer", "selected_tokens", "new_tokens", "prompt_tokens", "config"):
            assert line[key] == alone[key], key
    if not extra:
        return
    r = invoke("gemfilter", str(doc), "--questions", "-", "-m", tiny_dir, *FILTER, *extra,
               stdin="\n".join(QUESTIONS[1:]))  # fmt: skip
    assert r.exit_code == 0, r.output
    for line in map(json.loads, r.stdout.splitlines()):
        alone = _separate(tiny_dir, str(doc), "gemfilter", line["question"], *FILTER, *extra)
        assert line["indices"] == alone["indices"] and line["text"] == alone["text"]


def test_a_shell_loop_with_doc_cache_answers_like_separate_runs(tiny_dir, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    cache = tmp_path / "c" / "doc.cache"
    answers = []
    for i, q in enumerate(QUESTIONS[:2]):
        r = invoke("ask", str(doc), q, "-m", tiny_dir, *ASK, "--doc-cache", str(cache), "--json")
        assert r.exit_code == 0, r.output
        said = " ".join(r.stderr.split())
        assert ("loaded from" in said) == (i > 0) and ("saved to" in said) == (i == 0)
        answers.append(json.loads(r.stdout))
    for q, got in zip(QUESTIONS[:2], answers, strict=True):
        alone = _separate(tiny_dir, str(doc), "ask", q, *ASK)
        assert got["answer"] == alone["answer"]
        assert got["selected_tokens"] == alone["selected_tokens"]
    r = invoke("gemfilter", str(doc), QUESTIONS[1], "-m", tiny_dir, *FILTER,
               "--doc-cache", str(cache))  # fmt: skip
    assert r.exit_code == 0, r.output
    alone = _separate(tiny_dir, str(doc), "gemfilter", QUESTIONS[1], *FILTER)
    assert r.stdout.strip() == alone["text"].strip()
    r = invoke("gemfilter", str(doc), QUESTIONS[1], "-m", tiny_dir, "--layer", "1", "-k", "16",
               "--dtype", "bf16", "--doc-cache", str(cache))  # fmt: skip
    assert r.exit_code == 2 and "'float32' there, 'bfloat16' here" in " ".join(r.stderr.split())


def test_the_interactive_prompt_answers_each_question(tiny_dir, tmp_path, monkeypatch):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    monkeypatch.setattr("sepcli.commands.ask.on_terminal", lambda: True)
    r = invoke("ask", str(doc), "-m", tiny_dir, *ASK, stdin="\n".join(QUESTIONS[:2]) + "\n")
    assert r.exit_code == 0, r.output
    said = " ".join(r.stderr.split())
    assert said.count("read the document") == 1 and said.count("to first token") == 2
    alone = [_separate(tiny_dir, str(doc), "ask", q, *ASK)["answer"] for q in QUESTIONS[:2]]
    assert r.stdout.split("question> ")[1:3] == [a + "\n" for a in alone]


def assert_one_line_error(result, needle):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()  # status lines may come before it
    errors = [x for x in lines if x.startswith("error:")]
    assert errors == lines[-1:], lines
    assert needle in errors[0], errors


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--questions", "{empty}"], "is empty"),
        (["--questions", "{binary}"], "looks binary"),
        (["--questions", "{badjson}"], "line 2 is not a JSON object"),
        (["--questions", "{long}"], "question on {long} line 1: the question and chat template"),
        (["q", "--questions", "{qs}"], "not both"),
        ([], "no question"),
        (["q", "--doc-cache", "{dir}"], "is a directory"),
        (["q", "--doc-cache", "{doc}"], "is the document itself"),
        (["q", "--doc-cache", "{qs}"], "is not a sepcli document cache"),
        (["q", "--doc-cache", "{truncated}"], "damaged or truncated"),
        (["q", "--doc-cache", "{other_layer}"], "layer is 2 there, 1 here"),
        (["q", "--doc-cache", "{other_doc}"], "the document changed"),
        (["q", "--doc-cache", "{qs}/x.cache"], "cannot write document cache"),
    ],
)
def test_bad_input_is_one_line_error(tiny_dir, bad_files, args, needle):
    paths = {k: str(v) for k, v in bad_files.items()}
    args, needle = [a.format(**paths) for a in args], needle.format(**paths)
    before = {k: bad_files[k].read_bytes() for k in ("truncated", "qs", "other_doc")}
    r = invoke("ask", paths["doc"], *args, "-m", tiny_dir, *ASK)
    assert_one_line_error(r, needle)
    assert before == {k: bad_files[k].read_bytes() for k in before}  # nothing overwritten


@pytest.fixture(scope="module")
def bad_files(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    paths = {"doc": folder / "doc.txt", "dir": folder, "qs": folder / "qs.txt"}
    paths["doc"].write_text(DOC)
    paths["qs"].write_text("a question\n")
    for name, content in {
        "empty": "\n \n\n",
        "binary": "ab\x00cd",
        "badjson": 'first\n{"q": "no question field"}\n',
        "long": "why " * 300,
    }.items():
        paths[name] = folder / f"{name}.txt"
        paths[name].write_text(content)
    for name, layer, text in (("other_layer", "2", DOC), ("other_doc", "1", DOC + " More.")):
        paths[name] = folder / f"{name}.cache"
        other = folder / f"{name}.txt"
        other.write_text(text)
        made = invoke("gemfilter", str(other), "q", "-m", tiny_dir, "--layer", layer, "-k", "16",
                      "--dtype", "fp32", "--doc-cache", str(paths[name]))  # fmt: skip
        assert made.exit_code == 0, made.output
    paths["truncated"] = folder / "truncated.cache"
    paths["truncated"].write_bytes(paths["other_layer"].read_bytes()[:3000])
    return paths


def test_rebuild_replaces_a_damaged_or_stale_cache(tiny_dir, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    cache = tmp_path / "doc.cache"
    cache.write_bytes(b"PK\x03\x04 cut short")
    r = invoke("ask", str(doc), QUESTIONS[0], "-m", tiny_dir, *ASK, "--doc-cache", str(cache),
               "--rebuild", "--json")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (
        json.loads(r.stdout)["answer"]
        == _separate(tiny_dir, str(doc), "ask", QUESTIONS[0], *ASK)["answer"]
    )
    r = invoke("ask", str(doc), QUESTIONS[1], "-m", tiny_dir, *ASK, "--doc-cache", str(cache))
    assert r.exit_code == 0 and "loaded from" in " ".join(r.stderr.split())
