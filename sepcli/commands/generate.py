"""`sepcli generate`: prefill a prompt of any length on the ring, then write without end.

Thin on purpose: options -> configs, prompt -> token blocks, decoder tokens -> stdout (flushed
per token), status -> stderr. The decoding is in sepcli/generate/.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Annotated

import typer
from rich.live import Live

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    ModelOpt,
    ThreadsOpt,
    err_console,
    guarded,
    load,
    run_info,
    show_config,
    warn,
)
from sepcli.commands.cache_options import (
    DEFAULT_CACHE,
    CapacityOpt,
    ChunkOpt,
    InitOpt,
    MethodOpt,
    SepOpt,
    WindowOpt,
    cache_config,
)
from sepcli.commands.interrupt import StopFlag
from sepcli.commands.sampling_options import (
    DEFAULT_SAMPLING,
    IgnoreEosOpt,
    MaxNewOpt,
    SeedOpt,
    StopOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    generate_config,
)
from sepcli.errors import ConfigError, InputError
from sepcli.generate.decode import Decoder, GenerateConfig
from sepcli.stream.reader import ReadStats, open_input, start_token, text_blocks, token_blocks

DEFAULT_MAX_NEW = GenerateConfig().max_new_tokens


def status_line(decoder: Decoder) -> str:
    from sepcli.memory import rss_mb

    engine = decoder.engine
    return (
        f"{decoder.new_tokens:,} new tokens · {decoder.decode_tok_per_s:.1f} tok/s · cache "
        f"{engine.ring.used}/{engine.capacity} · RSS {rss_mb():,.0f} MiB"
    )


class _Status:
    """The live status line on stderr, when stderr is a terminal that the text does not share
    (text piped away, or --json); otherwise nothing until the summary.

    rich's Live redirects ``sys.stdout`` into its own console by default: the generated text
    would then go to the terminal (stderr) instead of the file stdout was redirected to."""

    def __init__(self, live: bool):
        self.live = (
            Live(console=err_console, transient=True, redirect_stdout=False) if live else None
        )

    def __enter__(self):
        if self.live is not None:
            self.live.__enter__()
        return self

    def __exit__(self, *exc):
        if self.live is not None:
            self.live.__exit__(*exc)
        return False

    def update(self, text: str) -> None:
        if self.live is not None:
            self.live.update(text)


def _prompt_blocks(tokenizer, file: str | None, prompt: str | None, stats: ReadStats, source):
    """BOS + the prompt's ids in blocks (a prompt file is read and tokenised a block at a time)."""
    if prompt is not None:
        text = prompt.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        stats.replaced += text.count("\ufffd") - prompt.count("\ufffd")
        texts = [text]
    else:
        texts = text_blocks(source, stats, allow_empty=True)
    return itertools.chain([start_token(tokenizer)], token_blocks(tokenizer, texts))


@guarded
def generate(
    ctx: typer.Context,
    file: Annotated[
        str | None,
        typer.Argument(help="Prompt file, or '-' for stdin (default: --prompt, else stdin)."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", "-p", help="The prompt text itself.")
    ] = None,
    max_new_tokens: MaxNewOpt = str(DEFAULT_MAX_NEW),
    temperature: TemperatureOpt = DEFAULT_SAMPLING.temperature,
    top_p: TopPOpt = DEFAULT_SAMPLING.top_p,
    top_k: TopKOpt = DEFAULT_SAMPLING.top_k,
    seed: SeedOpt = DEFAULT_SAMPLING.seed,
    stop: StopOpt = None,
    ignore_eos: IgnoreEosOpt = False,
    model: ModelOpt = MODEL_DEFAULT,
    method: MethodOpt = DEFAULT_CACHE.method,
    init: InitOpt = DEFAULT_CACHE.init,
    sep: SepOpt = DEFAULT_CACHE.sep,
    window: WindowOpt = DEFAULT_CACHE.window,
    capacity: CapacityOpt = DEFAULT_CACHE.capacity,
    chunk: ChunkOpt = None,
    ppl: Annotated[
        bool, typer.Option("--ppl", help="Also report the prompt's perplexity as it is read.")
    ] = False,
    json_out: JsonOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Generate text after a prompt of any length, on a fixed-size KV cache (endless with -n 0)."""
    # torch loads with these, after the options are parsed (`--help` does not wait for it)
    from sepcli.generate.sampling import stop_ids
    from sepcli.memory import peak_rss_mb
    from sepcli.separators import separator_mask
    from sepcli.stream.engine import StreamEngine
    from sepcli.stream.metrics import RunMetrics

    config = cache_config(ctx, method, init, sep, window, capacity, chunk)
    gen = generate_config(max_new_tokens, temperature, top_p, top_k, seed, stop, ignore_eos)
    if file is not None and prompt is not None:
        raise ConfigError("give the prompt either as PROMPT_FILE or as --prompt, not both")
    if file is None and prompt is None:
        if sys.stdin.isatty():
            raise InputError("no prompt: give PROMPT_FILE, '-' with text piped in, or --prompt")
        file = "-"
    with open_input(file or "-") as source:
        lm = load(model, device, dtype, threads)
        engine = StreamEngine(lm.model, config, separator_mask(lm.tokenizer), score=ppl)
        decoder = Decoder(engine, lm.tokenizer, gen.sampling, stop_ids(lm.model, lm.tokenizer))
        resolved = {**config.to_dict(), "capacity": engine.capacity, **gen.to_dict()}
        info = run_info(lm)
        show_config("generate", {**resolved, **info})
        stats = ReadStats()
        metrics = RunMetrics(engine.capacity)
        use_json = json_out
        live = err_console.is_terminal and (use_json or not sys.stdout.isatty())
        pieces: list[str] = []
        with StopFlag() as flag, _Status(live) as status:
            for chunk_stats in decoder.prefill(
                _prompt_blocks(lm.tokenizer, file, prompt, stats, source)
            ):
                metrics.update(chunk_stats)
                status.update(
                    f"prefill: {engine.seen:,} tokens · cache {engine.ring.used}/{engine.capacity}"
                )
                if flag.requested:
                    break
            if engine.seen == len(start_token(lm.tokenizer)) and not flag.requested:
                if engine.seen == 0:
                    raise InputError("the prompt is empty and the tokenizer has no BOS token")
                warn("the prompt is empty: generating from the BOS token alone")
            reason = "interrupt"
            if not flag.requested:
                for tok in decoder.decode(gen.max_new_tokens, gen.stop, gen.ignore_eos):
                    if tok.text:
                        pieces.append(tok.text)
                        if not use_json:
                            sys.stdout.write(tok.text)
                            sys.stdout.flush()
                    if live and decoder.new_tokens % 8 == 0:
                        status.update(status_line(decoder))
                    if flag.requested:
                        break
                reason = decoder.stop_reason or "interrupt"
        if not use_json and pieces and sys.stdout.isatty() and not pieces[-1].endswith("\n"):
            sys.stdout.write("\n")
        summary = {
            "text": "".join(pieces),
            "prompt_tokens": decoder.prefill_tokens,
            "new_tokens": decoder.new_tokens,
            "prefill_tok_per_s": round(decoder.prefill_tok_per_s, 1),
            "decode_tok_per_s": round(decoder.decode_tok_per_s, 2),
            "cache_used": engine.ring.used,
            "cache_capacity": engine.capacity,
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "stop_reason": reason,
            "prompt_ppl": metrics.snapshot()["ppl"] if ppl else None,
            "replaced_chars": stats.replaced,
            "config": resolved,
            **info,
        }
        if use_json:
            typer.echo(json.dumps(summary))
        if stats.replaced:
            warn(
                f"{stats.replaced} undecodable byte sequence(s) in the prompt replaced with U+FFFD"
            )
        ppl_note = f" · prompt perplexity {summary['prompt_ppl']}" if ppl else ""
        err_console.print(
            f"[dim]{summary['new_tokens']:,} new tokens after {summary['prompt_tokens']:,} prompt "
            f"tokens · stop: {reason} · prefill {summary['prefill_tok_per_s']} tok/s · decode "
            f"{summary['decode_tok_per_s']} tok/s · cache {engine.ring.used}/{engine.capacity} · "
            f"peak RSS {summary['peak_rss_mb']:,.0f} MiB{ppl_note}[/]"
        )
        if reason == "interrupt":
            raise typer.Exit(128 + flag.signum)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
