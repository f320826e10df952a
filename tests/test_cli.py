"""The CLI surface: help for every command, version, one-line errors with exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sepcli import __version__
from sepcli.cli import COMMANDS, app, load_command
from sepcli.cli_common import MODEL_DEFAULT
from sepcli.models import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def command_names() -> list[str]:
    return sorted(typer.main.get_command(app).list_commands(None))


def test_every_command_has_help():
    names = command_names()
    assert "info" in names
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output


def test_the_root_help_lines_are_the_commands_own():
    """`sepcli --help` lists the commands from cli.COMMANDS without importing them: each line
    must be what the command's own help says (its short help, else its first docstring line)."""
    for name, (_, line) in COMMANDS.items():
        command = load_command(name)
        own = command.short_help or command.help.strip().splitlines()[0]
        assert line == own, name
    assert MODEL_DEFAULT == DEFAULT_MODEL


# The commands whose option parsing needs nothing heavy. `info` (its gguf helpers), `score`
# and `calibrate` still import torch with their module (their defaults live beside torch code).
LIGHT = ["stream", "generate", "chat", "ask", "gemfilter"]
_PROBE = """
import sys, time
from sepcli.cli import app
try:
    app(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("TORCH" if "torch" in sys.modules else "NO-TORCH", code, file=sys.stderr)
"""


def _probe(*args):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.stderr.strip().splitlines()[-1], proc


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["no-such-command"]]
    + [[name, "--help"] for name in LIGHT]
    + [[name, "--no-such-option"] for name in LIGHT]
    + [["generate", "-n"], ["stream", "--chunk", "many"]],
)
def test_help_and_usage_errors_do_not_import_torch(args):
    verdict, proc = _probe(*args)
    want = 0 if args[-1] in ("--help", "--version") else 2
    assert verdict == f"NO-TORCH {want}", (args, proc.stderr[-800:])


def test_how_long_import_torch_takes():
    """What the lazy imports save on every `--help`: printed, not asserted (a busy machine)."""
    code = "import time; t = time.perf_counter(); import torch; print(time.perf_counter() - t)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    print(f"import torch: {float(proc.stdout):.2f} s")


def test_root_help_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "info" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"sepcli {__version__}"


@pytest.mark.parametrize("bad", ["nope", "./missing.gguf", "org/not-cached-anywhere"])
def test_bad_model_is_one_line_exit_2(bad):
    result = runner.invoke(app, ["info", "--model", bad])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output


def test_bad_device_and_dtype(tmp_path):
    for args in (["--device", "tpu"], ["--dtype", "int4"]):
        result = runner.invoke(app, ["info", *args])
        assert result.exit_code == 2 and "error:" in result.output


def test_info_json_on_a_local_model(tmp_path, tokenizer, tiny_llama):
    folder = tmp_path / "tiny"
    tiny_llama(layers=2).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = runner.invoke(app, ["info", "--model", str(folder), "--json", "--dtype", "fp32"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["layers"] == 2 and facts["dtype"] == "fp32"
    assert len(facts["separator_token_ids"]) > 50


@pytest.mark.real
def test_info_on_the_embedded_model():
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["model"] == "SmolLM2-135M-Instruct" and facts["layers"] == 30
