"""`sepcli chat`: a conversation on the ring, interactive on a terminal, JSON lines otherwise.

Thin on purpose: options -> configs, turns -> :class:`~sepcli.generate.chat.ChatSession` ->
replies on stdout. The interactive prompt is in chat_repl.py, turn parsing in chat_turns.py.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sepcli.cli_common import (
    MODEL_DEFAULT,
    DeviceOpt,
    DtypeOpt,
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
from sepcli.commands.chat_turns import load_turns_file, read_turns
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
from sepcli.errors import SepcliError
from sepcli.stream.reader import ReadStats

if TYPE_CHECKING:
    from sepcli.generate.chat import ChatSession

DEFAULT_REPLY_TOKENS = 512


def describe(stats: dict) -> str:
    from sepcli.memory import rss_mb

    speed = stats.get("decode_tok_per_s")
    return (
        f"[dim]{stats['turns']} turn(s) · {stats['total_tokens']:,} tokens in the conversation · "
        f"{stats['new_tokens']:,} generated · cache {stats['cache_used']}/{stats['cache_capacity']}"
        f" · last reply {speed if speed is not None else '-'} tok/s · RSS {rss_mb():,.0f} MiB[/]"
    )


def _jsonl(session: ChatSession, turns, stop: StopFlag) -> None:
    """One JSON line per reply on stdout."""
    for user in turns:
        reply = []
        for tok in session.send(user):
            reply.append(tok.text)
            if stop.requested:
                break
        turn, stats = session.turns[-1], session.stats()
        line = {
            "turn": stats["turns"],
            "user": user,
            "reply": turn.reply,
            "new_tokens": turn.new_tokens,
            "prompt_tokens": turn.prompt_tokens,
            "total_tokens": stats["total_tokens"],
            "cache_used": stats["cache_used"],
            "decode_tok_per_s": turn.decode_tok_per_s,
            "stop_reason": turn.stop_reason,
        }
        typer.echo(json.dumps(line, ensure_ascii=False))
        if stop.requested:
            return


@guarded
def chat(
    ctx: typer.Context,
    system: Annotated[
        str | None, typer.Option("--system", "-s", help="System prompt (first turn only).")
    ] = None,
    turns_file: Annotated[
        str | None,
        typer.Option(
            "--turns",
            help='Non-interactive: user turns from this file, one per line (text or {"user": ...}).',
        ),
    ] = None,
    max_new_tokens: MaxNewOpt = str(DEFAULT_REPLY_TOKENS),
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
    checkpoint_path: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint", help="Save the session here when it ends (Ctrl-D, end of input)."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue a saved session (same model and cache config)."),
    ] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Chat with the model; every turn flows into one fixed-size KV cache, never re-encoded."""
    # torch loads with these, after the options are parsed (`--help` does not wait for it)
    from sepcli.commands.chat_repl import Repl
    from sepcli.generate.chat import ChatSession
    from sepcli.memory import peak_rss_mb
    from sepcli.stream import checkpoint

    config = cache_config(ctx, method, init, sep, window, capacity, chunk)
    gen = generate_config(max_new_tokens, temperature, top_p, top_k, seed, stop, ignore_eos)
    if checkpoint_path is not None:
        checkpoint.check_target(checkpoint_path)
    stats = ReadStats()
    interactive = turns_file is None and sys.stdin.isatty()
    if turns_file is not None:
        turns = load_turns_file(turns_file, stats)
    elif not interactive:
        turns = read_turns(sys.stdin.buffer, "stdin", stats)

    lm = load(model, device, dtype, threads)
    session = ChatSession(lm.model, lm.tokenizer, config, gen, system)
    meta = {
        "kind": "chat",
        "model": checkpoint.model_fingerprint(lm.model, lm.name),
        "config": config.to_dict(),
        "format": "template" if session.format.template else "plain",
    }
    if resume is not None:
        payload = checkpoint.load(resume, meta)
        session.load_state_dict(payload["engine"], payload["metrics"])
        if system is not None:
            warn("--system has no effect with --resume: the session keeps its own")
    if not session.format.template:
        warn(f"{lm.name} has no chat template: using a plain 'User:/Assistant:' format")
    if checkpoint_path is not None:
        checkpoint.probe(checkpoint_path)
    resolved = {**config.to_dict(), "capacity": session.engine.capacity, **gen.to_dict()}
    extra = f" resumed at turn {len(session.turns)}" if resume else ""
    show_config("chat", {**resolved, **run_info(lm)}, extra)

    def save(path) -> None:
        checkpoint.check_target(path)  # /save never overwrites a file that is not a checkpoint
        checkpoint.save(path, meta, session.engine.state_dict(), session.state_dict())

    failed: SepcliError | None = None
    interrupted = None
    try:
        if interactive:
            Repl(session, save, describe).run()
        else:
            with StopFlag() as flag:
                _jsonl(session, turns, flag)
            interrupted = flag.signum if flag.requested else None
    except SepcliError as exc:  # the turns so far stand: save them, then report
        failed = exc
    if checkpoint_path is not None:
        save(checkpoint_path)
        err_console.print(f"[dim]session saved to {checkpoint_path}[/]")
    err_console.print(describe(session.stats()) + f" [dim]· peak RSS {peak_rss_mb():,.0f} MiB[/]")
    if stats.replaced:
        warn(f"{stats.replaced} undecodable byte sequence(s) in the turns replaced with U+FFFD")
    if failed is not None:
        raise failed
    if interrupted:
        raise typer.Exit(128 + interrupted)


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
