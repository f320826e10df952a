"""sepcli's kernels are `sepcli.kernels`, never a top-level `kernels`.

Hugging Face's `kernels` package (an optional dependency of transformers) is a top-level
`kernels` too: installed beside a top-level one of ours, the two would overwrite each other's
files (tried in a scratch venv: either sepcli's ring attention or HF's `get_kernel` was gone,
depending on the install order). The folder stays `kernels/` at the top of the repository;
`sepcli/kernels` links to it and the wheel installs it there.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _absolute_kernels_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [
            f"{path.relative_to(ROOT)}:{node.lineno} {n}"
            for n in names
            if n.split(".")[0] == "kernels"
        ]
    return found


def test_no_module_imports_a_top_level_kernels():
    """Every import of the kernels, also those inside functions (the Triton modules are
    imported on CUDA only), names `sepcli.kernels` or is relative inside kernels/."""
    files = [p for d in ("sepcli", "kernels", "tests", "bench") for p in (ROOT / d).rglob("*.py")]
    files = [p for p in files if "sepcli/kernels" not in p.relative_to(ROOT).as_posix()]
    assert len(files) > 50
    assert [hit for p in files for hit in _absolute_kernels_imports(p)] == []


_PROBE = """
import importlib, pkgutil, sys
import kernels
assert kernels.STAND_IN, kernels.__file__
import sepcli
for info in pkgutil.walk_packages(sepcli.__path__, "sepcli."):
    if info.name.startswith("sepcli.kernels"):
        continue  # imported below, through sepcli
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:  # an optional extra (ray) that is not installed
        assert exc.name.split(".")[0] != "kernels", (info.name, exc)
import torch
from sepcli.kernels import gemfilter_scores, ring_attention
from sepcli.kernels.ring.reference import ring_attention_reference
from sepcli.kernels.cpu import pack_q4
g = torch.Generator().manual_seed(3)
q, k, v = (torch.randn(1, 2, n, 8, generator=g) for n in (3, 5, 5))
slot_pos, q_pos, inv_freq = torch.arange(5), torch.tensor([5, 6, 7]), torch.rand(4, generator=g)
args = (q, k, v, slot_pos, q_pos, inv_freq, 0.35)
assert torch.equal(ring_attention(*args), ring_attention_reference(*args))
ours = sorted(m for m in sys.modules if m == "kernels" or m.startswith("kernels."))
print(ours, kernels.__file__)
"""


def test_sepcli_runs_beside_another_top_level_kernels(tmp_path):
    """A stand-in for HF's package first on the path: every sepcli module imports, the kernels
    run, and `import kernels` is still the stand-in (nothing of ours took its name)."""
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text("STAND_IN = True\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)])}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['kernels']", str(site / "kernels" / "__init__.py")]
