"""The CLI surface: help for every command, version, one-line errors with exit codes."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from sepcli import __version__
from sepcli.cli import app

runner = CliRunner()


def command_names() -> list[str]:
    return sorted(typer.main.get_command(app).commands)


def test_every_command_has_help():
    names = command_names()
    assert "info" in names
    for name in names:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Usage" in result.output


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
