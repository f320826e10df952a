"""Generation on the ring against independent references: transformers' own greedy
``generate`` when nothing is evicted, the naive token-by-token cache of tests/naive.py when the
ring wraps; plus the sampler, the detokeniser, stop strings and the chat turn format."""

from __future__ import annotations

import pytest
import torch

from sepcli.errors import ConfigError
from sepcli.generate.chat import ChatFormat
from sepcli.generate.decode import Decoder, GenerateConfig, generate
from sepcli.generate.detok import Detokenizer, StopStrings
from sepcli.generate.sampling import SamplingConfig, sample
from sepcli.stream.config import StreamConfig
from sepcli.stream.engine import StreamEngine
from sepcli.texts import essays_text

from helpers import SHARP
from naive import naive_greedy

# SHARP weights: a random tiny model then has peaked attention and spread-out logits, so one
# wrong position or visible token changes the argmax.
SEED = 1234


@pytest.fixture(scope="module")
def prompt(tokenizer):
    """BOS + 40 real tokens with separators."""
    ids = tokenizer(essays_text(max_chars=2000), add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id] + ids[:40]


def greedy_ids(model, tokenizer, seps, prompt, n, config):
    engine = StreamEngine(model, config, seps, score=False)
    decoder = Decoder(engine, tokenizer, SamplingConfig(), eos=set())
    for _ in decoder.prefill([prompt]):
        pass
    return [t.id for t in decoder.decode(n)], engine


def hf_greedy(model, prompt, n):
    """transformers' own greedy decoding with its DynamicCache, EOS switched off."""
    model.generation_config.eos_token_id = None
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


@torch.inference_mode()
@pytest.mark.parametrize(
    "config",
    [
        StreamConfig(method="full", chunk=16),
        StreamConfig(init=2, sep=8, window=32, capacity=200, chunk=1),  # sepllm, never full
        StreamConfig(init=2, sep=8, window=32, capacity=200, chunk=32),
    ],
)
def test_greedy_without_eviction_equals_hf_generate(tiny_llama, tokenizer, seps, prompt, config):
    print("seed", SEED)
    model = tiny_llama(layers=2, hidden=64, heads=4, kv_heads=2, seed=SEED, initializer_range=SHARP)
    ours, engine = greedy_ids(model, tokenizer, seps, prompt, 80, config)
    assert ours == hf_greedy(model, prompt, 80)
    assert len(set(ours)) > 10  # a real sequence, not one token repeated
    assert engine.seen == len(prompt) + 79  # the last token is pending, never fed


@torch.inference_mode()
@pytest.mark.parametrize("method", ["sepllm", "streamingllm", "window"])
def test_greedy_with_eviction_equals_naive_reference(tiny_llama, tokenizer, seps, prompt, method):
    print("seed", SEED)
    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=SEED, initializer_range=SHARP)
    a, s, w, c = 2, 4, 8, 20
    config = StreamConfig(method=method, init=a, sep=s, window=w, capacity=c, chunk=8)
    ours, engine = greedy_ids(model, tokenizer, seps, prompt, 200, config)
    sep_ids = set(torch.nonzero(seps).squeeze(-1).tolist())
    assert ours == naive_greedy(model, prompt, 200, method, a, s, w, c, sep_ids)
    assert engine.seen > 10 * c  # the ring wrapped many times
    assert len(set(ours)) > 10


@torch.inference_mode()
@pytest.mark.parametrize("method", ["sepllm", "streamingllm", "window", "full"])
def test_chunked_prefill_then_decode_equals_chunk_1(tiny_llama, tokenizer, seps, method):
    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=SEED, initializer_range=SHARP)
    ids = tokenizer(essays_text(max_chars=3000), add_special_tokens=False)["input_ids"][:150]
    sizes = dict(method=method, init=2, sep=4, window=16, capacity=40)
    one, _ = greedy_ids(model, tokenizer, seps, ids, 60, StreamConfig(chunk=1, **sizes))
    many, _ = greedy_ids(model, tokenizer, seps, ids, 60, StreamConfig(chunk=13, **sizes))
    assert one == many


class FakeClock:
    """time.perf_counter for sepcli.generate.decode: moves only when a test says so."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@torch.inference_mode()
def test_rates_count_only_the_work_they_name(tiny_llama, tokenizer, seps, prompt, monkeypatch):
    """prefill_s is the engine's feeds over the prompt, not reading or tokenising it (a slow
    pipe); decode_s is the decoder's steps, not the caller's time with each token (a slow
    terminal). A fake clock: every feed takes 1 s, every wait for input or output 100 s."""
    clock = FakeClock()
    monkeypatch.setattr("sepcli.generate.decode.time", clock)
    model = tiny_llama(layers=2, hidden=32, heads=2, kv_heads=1, seed=SEED)
    engine = StreamEngine(model, StreamConfig(chunk=8), seps, score=False)
    feed = engine.feed

    def timed_feed(ids):
        clock.now += 1.0
        return feed(ids)

    monkeypatch.setattr(engine, "feed", timed_feed)

    def slow_input():
        for start in range(0, len(prompt), 10):
            clock.now += 100.0  # waiting for a pipe, tokenising
            yield prompt[start : start + 10]
        clock.now += 100.0  # waiting for the end of the input

    decoder = Decoder(engine, tokenizer, SamplingConfig(), eos=set())
    chunks = list(decoder.prefill(slow_input()))
    assert decoder.prefill_tokens == len(prompt) == 41
    assert decoder.prefill_s == len(chunks) == 6  # 41 tokens in chunks of 8
    for _ in decoder.decode(5):
        clock.now += 100.0  # the caller writing the token to a slow terminal
    # 5 tokens: the first from the prefill's logits, then 4 feeds of the pending token
    assert decoder.new_tokens == 5 and decoder.decode_s == 4
    assert decoder.decode_tok_per_s == 5 / 4 and decoder.prefill_tok_per_s == 41 / 6


@torch.inference_mode()
def test_seeded_sampling_reproduces_and_seeds_differ(tiny_llama, tokenizer):
    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=SEED)

    def run(seed):
        sampling = SamplingConfig(temperature=1.0, top_p=0.9, top_k=50, seed=seed)
        cfg = GenerateConfig(40, ignore_eos=True, sampling=sampling)
        return [t.id for t in generate(model, tokenizer, "Once upon a time", config=cfg)]

    first = run(1)
    assert run(1) == first and len(first) == 40
    assert run(2) != first


@pytest.mark.real
@torch.inference_mode()
def test_real_model_greedy_equals_hf_generate(real_model):
    model, tok = real_model.model, real_model.tokenizer
    prompt = [tok.bos_token_id] + tok(essays_text(max_chars=600), add_special_tokens=False)[
        "input_ids"
    ][:100]
    from sepcli.separators import separator_mask

    ours, _ = greedy_ids(model, tok, separator_mask(tok), prompt, 64, StreamConfig())
    eos = model.generation_config.eos_token_id
    try:
        assert ours == hf_greedy(model, prompt, 64)
    finally:
        model.generation_config.eos_token_id = eos


# ---------------------------------------------------------------------- sampling


def test_sampling_filters_keep_only_the_allowed_tokens():
    torch.manual_seed(0)
    logits = torch.randn(1000) * 3
    gen = torch.Generator().manual_seed(0)
    assert sample(logits, SamplingConfig()) == int(logits.argmax())
    assert sample(logits, SamplingConfig(temperature=1.0, top_k=1), gen) == int(logits.argmax())
    top5 = set(torch.topk(logits, 5).indices.tolist())
    draws = {sample(logits, SamplingConfig(temperature=2.0, top_k=5), gen) for _ in range(200)}
    assert draws <= top5 and len(draws) > 1
    # top-p: the smallest set of most likely tokens reaching p
    probs = logits.softmax(-1)
    order = probs.argsort(descending=True)
    need = int((probs[order].cumsum(-1) < 0.5).sum()) + 1
    nucleus = set(order[:need].tolist())
    draws = {sample(logits, SamplingConfig(temperature=1.0, top_p=0.5), gen) for _ in range(300)}
    assert draws <= nucleus and len(draws) > 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperature=-0.1), "--temperature"),
        (dict(temperature=float("nan")), "--temperature"),
        (dict(top_p=0.0), "--top-p"),
        (dict(top_p=1.5), "--top-p"),
        (dict(top_k=-1), "--top-k"),
    ],
)
def test_bad_sampling_values_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SamplingConfig(**kwargs)


def test_bad_generate_values_are_config_errors():
    with pytest.raises(ConfigError, match="--max-new-tokens"):
        GenerateConfig(max_new_tokens=-1)
    with pytest.raises(ConfigError, match="--stop"):
        GenerateConfig(stop=("",))


# ---------------------------------------------------------------------- text


def test_detokenizer_pieces_join_to_the_whole_decode(tokenizer):
    text = essays_text(max_chars=1500) + " naïve café — 世界 🎉🎉 done.\n\n  end"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    detok = Detokenizer(tokenizer)
    pieces = [detok.push(t) for t in ids]
    assert "".join(pieces) == tokenizer.decode(ids, skip_special_tokens=True)
    assert "" in pieces  # multi-byte characters were held back until complete
    assert not any("\ufffd" in p for p in pieces)


def test_stop_strings_cut_and_hold_back():
    stops = StopStrings(["\nUser:", "END"])
    out = []
    for piece in ["Hello", " wor", "ld\nU", "se"]:
        text, hit = stops.push(piece)
        out.append(text)
        assert not hit
    assert "".join(out) == "Hello world"  # "\nUse" might begin a stop string: held back
    text, hit = stops.push("r: more")
    assert hit and text == "" and stops.tail == "\nUser: more"
    other = StopStrings(["END"])
    assert other.push("abcEN") == ("abc", False)
    assert other.push("x") == ("ENx", False)


def test_chat_format_turns_add_up_to_the_template(tokenizer):
    fmt = ChatFormat(tokenizer, system="Be brief.")
    conv = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    whole = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    assert fmt.opening("Hi") + "Hello!" + fmt.next_turn("Bye") == whole


def test_plain_format_without_a_template(tokenizer):
    fmt = ChatFormat(type("NoTemplate", (), {"chat_template": None})(), system="S")
    assert not fmt.template and fmt.stop == ("\nUser:",)
    assert fmt.opening("Hi") + " Yo" + fmt.next_turn("Bye") == (
        "System: S\n\nUser: Hi\nAssistant: Yo\nUser: Bye\nAssistant:"
    )


@torch.inference_mode()
@pytest.mark.parametrize("method", ["sepllm", "streamingllm", "window"])
def test_transformers_generate_with_the_cache_adapter(tiny_llama, tokenizer, seps, prompt, method):
    """``model.generate()`` on :class:`SepLLMCache` (ids passed by ``track_ids``) writes the
    same greedy tokens as sepcli's decoder, far past the cache's capacity."""
    import warnings

    from sepcli.stream.hf_cache import SepLLMCache

    model = tiny_llama(layers=2, hidden=48, heads=6, kv_heads=2, seed=SEED, initializer_range=SHARP)
    config = StreamConfig(method=method, init=2, sep=4, window=8, capacity=48, chunk=8)
    ours, _ = greedy_ids(model, tokenizer, seps, prompt, 150, config)
    cache = SepLLMCache(model, config, seps)
    model.generation_config.eos_token_id = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated argument names
        out = model.generate(
            torch.tensor([prompt]),
            cache=cache,
            logits_processor=[cache.track_ids()],
            max_new_tokens=150,
            do_sample=False,
            pad_token_id=0,
        )
    assert out[0, len(prompt) :].tolist() == ours
    assert cache.ring.used <= 48 and cache.seen == len(prompt) + 149


def test_generate_with_the_adapter_refuses_a_prompt_longer_than_the_cache(tiny_llama, seps):
    from sepcli.errors import InputError
    from sepcli.stream.hf_cache import SepLLMCache

    model = tiny_llama(layers=1, hidden=32, heads=2, kv_heads=1)
    cache = SepLLMCache(model, StreamConfig(init=2, sep=4, window=8, capacity=20), seps)
    with pytest.raises(InputError, match="steps"):
        model.generate(
            torch.arange(1, 31)[None],
            cache=cache,
            logits_processor=[cache.track_ids()],
            max_new_tokens=2,
        )
