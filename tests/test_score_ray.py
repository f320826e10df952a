"""`sepcli score --ray` on a real local Ray (started by the test, two CPUs): every record comes
back exactly once, in order, with the scores the local path gives."""

from __future__ import annotations

import gzip
import json
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sepcli.cli import app
from sepcli.texts import essays_text
from tests.helpers import tiny_model_folder

ray = pytest.importorskip("ray")

SMALL = ["--init", "2", "--sep", "4", "--window", "16", "--capacity", "40", "--chunk", "8"]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def local_ray():
    # Workers import this checkout's sepcli (not another install of it).
    env = {"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        runtime_env={"env_vars": env},
        log_to_driver=False,
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, tokenizer, "tiny-ray-model", seed=11)


# Two actors on two CPUs: reading must not wait for a CPU the actors hold (it once hung here).
@pytest.mark.timeout(600)
def test_ray_gives_every_record_once_with_the_local_scores(local_ray, tiny_dir, tmp_path):
    words = essays_text(max_chars=30000).split(" ")
    rows = [{"id": i, "text": " ".join(words[i : i + 1 + (i * 13) % 30])} for i in range(700)]
    rows[7]["text"] = 3  # a bad record, passed through with --skip-bad on both paths
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows[:400]) + "\n")  # + a blank line
    with gzip.open(b, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows[400:]))
    common = [str(a), str(b), "--model", tiny_dir, "--dtype", "fp32", "--skip-bad", *SMALL]

    local = CliRunner().invoke(app, ["score", *common])
    assert local.exit_code == 0, local.output
    on_ray = CliRunner().invoke(app, ["score", *common, "--ray", "auto", "--ray-actors", "2"])
    assert on_ray.exit_code == 0, on_ray.output

    want = [json.loads(x) for x in local.stdout.splitlines()]
    got = [json.loads(x) for x in on_ray.stdout.splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in want] == list(range(len(rows)))
    assert "not a string" in got[7]["error"]
    differ = [
        (g["id"], g.get("tokens"), g.get("nll"), w.get("nll"))
        for g, w in zip(got, want, strict=True)
        if g.get("tokens") != w.get("tokens")
        or (w.get("nll") is not None and not math.isclose(g["nll"], w["nll"], rel_tol=1e-5))
    ]
    assert not differ, (len(differ), differ[:20])


def test_ray_refuses_stdin_and_lines(tiny_dir):
    result = CliRunner().invoke(app, ["score", "-", "--ray", "local", "--model", tiny_dir])
    assert result.exit_code == 2 and "--ray reads JSON lines files" in result.stderr
