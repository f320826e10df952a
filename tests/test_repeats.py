"""The repetition stop (sepcli/generate/repeats.py): the incremental guard against a deliberately
naive check of the rule on synthetic token streams, then end to end with a tiny model."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.errors import ConfigError
from sepcli.generate.decode import GenerateConfig, generate
from sepcli.generate.repeats import MAX_SPAN, MIN_SPAN, RepeatGuard
from sepcli.models import load_model
from sepcli.stream.config import StreamConfig

from helpers import build_tiny_llama

SEED = 20261202


def naive_loops(tokens: list[int], times: int, lo: int = MIN_SPAN, hi: int = MAX_SPAN) -> bool:
    """The rule as written: the last times*L tokens are one L-token span times times over."""
    for span in range(lo, hi + 1):
        if times * span <= len(tokens) and tokens[-times * span :] == tokens[-span:] * times:
            return True
    return False


def first_stop(tokens, times, **kw) -> int | None:
    """1-based count of tokens after which the guard stops (None: never)."""
    guard = RepeatGuard(times, **kw)
    for i, tok in enumerate(tokens, 1):
        if guard.push(tok):
            return i
    return None


def naive_first_stop(tokens, times, **kw) -> int | None:
    for i in range(1, len(tokens) + 1):
        if naive_loops(tokens[:i], times, **kw):
            return i
    return None


def synthetic(rng: random.Random) -> list[int]:
    """Random tokens from a small alphabet (accidental repeats happen), with a loop of a random
    period (1 to 60) and length put in at a random place, sometimes followed by more noise."""
    vocab = rng.choice([2, 3, 5, 50])
    out = [rng.randrange(vocab) for _ in range(rng.randrange(0, 120))]
    period = rng.choice([1, 2, 3, 7, 8, 9, 13, 40, 60])
    span = [rng.randrange(vocab) for _ in range(period)]
    out += (span * 200)[: rng.randrange(0, 3 * max(period, MIN_SPAN) + 30)]
    out += [rng.randrange(vocab) for _ in range(rng.randrange(0, 40))]
    return out


@pytest.mark.parametrize("times", [2, 3, 4])
def test_the_guard_stops_where_the_naive_rule_first_holds(times):
    print(f"seed {SEED + times}")
    rng = random.Random(SEED + times)
    stopped = 0
    for _ in range(300):
        tokens = synthetic(rng)
        want = naive_first_stop(tokens, times, hi=64)
        assert first_stop(tokens, times, max_span=64) == want, tokens
        stopped += want is not None
    assert 30 < stopped < 300  # both kinds of stream were seen


def test_the_floor_and_the_ceiling_of_the_span():
    assert first_stop([7] * 23, 3) is None and first_stop([7] * 24, 3) == 24  # one token: L = 8
    words = list(range(5))  # a 5-token loop is caught as its multiple 10
    assert first_stop(words * 6, 3) == 30 and first_stop(words * 5, 3) is None
    long_span = list(range(MAX_SPAN + 1))  # longer than MAX_SPAN: never a loop
    assert first_stop(long_span * 3, 3) is None
    assert first_stop(list(range(MAX_SPAN)) * 3, 3) == 3 * MAX_SPAN
    assert first_stop([1] * 1000, 0) is None  # off


@pytest.mark.parametrize("bad", [1, -1, True, 2.5])
def test_bad_times_are_refused(bad):
    with pytest.raises(ConfigError, match="--stop-repeats"):
        RepeatGuard(bad)
    with pytest.raises(ConfigError, match="--stop-repeats"):
        GenerateConfig(stop_repeats=bad)


# ---------------------------------------------------------------------- end to end

SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    """Seed 8 and weights of scale 0.15: greedy text that falls into a loop of several distinct
    tokens after a few dozen (a larger scale wanders for hundreds of tokens, a smaller one
    repeats a single token)."""
    folder = tmp_path_factory.mktemp("tiny-repeat-model")
    build_tiny_llama(
        len(tokenizer), layers=2, hidden=32, heads=2, kv_heads=1, seed=8, initializer_range=0.15
    ).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_generate_stops_at_the_first_loop_of_its_own_tokens(tiny_dir):
    """The tiny model's greedy text loops; the decoder stops exactly where the naive rule on
    the ids it generated first holds, and the text is the unstopped run's beginning."""
    lm = load_model(tiny_dir, device="cpu", dtype="fp32")
    cache = StreamConfig(init=2, sep=4, window=16, capacity=40, chunk=8)
    prompt = "The printing press"
    free = GenerateConfig(400, ignore_eos=True)
    free = [t.id for t in generate(lm.model, lm.tokenizer, prompt, cache, free)]
    want = naive_first_stop(free, 3)
    assert want is not None, "the tiny model did not loop within 400 tokens"
    assert len(set(free[:want])) > 3  # a loop of several tokens, not one said over and over
    stopped = GenerateConfig(400, ignore_eos=True, stop_repeats=3)
    got = [t.id for t in generate(lm.model, lm.tokenizer, prompt, cache, stopped)]
    assert got == free[:want]

    args = ["--model", tiny_dir, "--dtype", "fp32", *SMALL, "--prompt", prompt, "-n", "400"]
    out = CliRunner().invoke(app, ["generate", *args, "--ignore-eos", "--json"])
    assert json.loads(out.stdout.splitlines()[-1])["stop_reason"] == "max"  # off by default
    out = CliRunner().invoke(
        app, ["generate", *args, "--ignore-eos", "--json", "--stop-repeats", "3"]
    )
    summary = json.loads(out.stdout.splitlines()[-1])
    assert summary["stop_reason"] == "repeat" and summary["new_tokens"] == want
    assert "stop: repeat" in out.stderr


def test_chat_stops_a_looping_reply_by_default(tiny_dir):
    args = ["--model", tiny_dir, "--dtype", "fp32", *SMALL, "-n", "400", "--ignore-eos"]
    out = CliRunner().invoke(app, ["chat", *args], input="Tell me about printing.\n")
    assert out.exit_code == 0, out.output
    reply = json.loads(out.stdout.splitlines()[-1])
    assert reply["stop_reason"] == "repeat" and reply["new_tokens"] < 400
    out = CliRunner().invoke(
        app, ["chat", *args, "--stop-repeats", "0"], input="Tell me about printing.\n"
    )
    assert json.loads(out.stdout.splitlines()[-1])["stop_reason"] == "max"


def test_ask_stops_a_looping_answer_by_default_and_takes_n(tiny_dir, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text("The kite festival in Brenmoor takes place in October. " * 20)
    args = ["ask", str(doc), "When is the festival?", "--model", tiny_dir, "--dtype", "fp32"]
    args += ["--method", "full", "--json", "-n", "300"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["stop_reason"] == "repeat" and answer["new_tokens"] < 300
    out = CliRunner().invoke(app, [*args, "--stop-repeats", "0"])
    answer = json.loads(out.stdout.splitlines()[-1])
    assert answer["stop_reason"] in ("max", "eos") and answer["config"]["stop_repeats"] == 0
