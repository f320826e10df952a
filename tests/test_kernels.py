"""Triton kernels against their torch references on awkward shapes, with seeded random inputs.

Without CUDA the kernels run under Triton's CPU interpreter: ``TRITON_INTERPRET=1`` must be set
when the kernel modules are *decorated*, so this module sets it only around their import and
restores it (other modules in the same pytest process never see it). Shapes stay small there;
on a GPU the same tests run natively, plus a few at Llama-3-8B's head shapes.

Each test case has its own fixed seed (see ``gen``), printed with a failure, so it replays.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch

from sepcli import kernels
from sepcli.kernels.gemscore.reference import gemfilter_scores_reference
from sepcli.kernels.ring.reference import ring_attention_reference

if importlib.util.find_spec("triton") is None:  # not importorskip: that would import triton
    pytest.skip("triton is not installed", allow_module_level=True)

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# Relative error bounds (norm of the difference over norm of the reference). bf16 rounds the
# rotated q/k and the softmax weights to 8 bits, as the reference rounds q/k and SDPA works.
TOL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 1.5e-2}


def test_subpackages_stay_importable_next_to_the_dispatchers():
    """`import sepcli.kernels.ring.reference as x` walks attributes: a dispatcher function named like
    its subpackage (a function `kernels.ring` beside the folder kernels/ring/) would shadow it
    and break this."""
    import sepcli.kernels.gemscore.reference as score_ref
    import sepcli.kernels.ring.reference as ring_ref

    assert ring_ref.ring_attention_reference is ring_attention_reference
    assert score_ref.gemfilter_scores_reference is gemfilter_scores_reference
    assert callable(kernels.ring_attention) and callable(kernels.gemfilter_scores)


def _import_kernels():
    """The two Triton modules, built for the interpreter when there is no GPU.

    Triton decorates its own library functions (tl.zeros, tl.sum, ...) when it is first
    imported, so the variable must be set before that import, not only before ours. It is
    restored afterwards so that modules collected later never see it."""
    names = ("sepcli.kernels.ring.triton_impl", "sepcli.kernels.gemscore.triton_impl")
    if CUDA:
        return [importlib.import_module(n) for n in names]
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip(
            "triton was imported before TRITON_INTERPRET=1 could be set; run "
            "tests/test_kernels.py on its own or with TRITON_INTERPRET=1",
            allow_module_level=True,
        )
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        mods = []
        for name in names:
            mod = sys.modules.get(name)
            if mod is None:
                mod = importlib.import_module(name)
            elif not mod._interpreted():  # imported earlier for a GPU: rebuild for the CPU
                mod = importlib.reload(mod)
            mods.append(mod)
        return mods
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


_ring_mod, _score_mod = _import_kernels()
ring_attention_triton = _ring_mod.ring_attention_triton
gemfilter_scores_triton = _score_mod.gemfilter_scores_triton


@pytest.fixture(autouse=True, scope="module")
def _interpreter_env():
    """The interpreter also reads the variable while launching (lazy imports inside Triton),
    so keep it set while this module's tests run, and only then."""
    if CUDA:
        yield
        return
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = previous


@pytest.fixture
def gen(request):
    """A generator with a fixed seed per test case (from its name and parameters), printed so
    that pytest shows it with a failure: ``torch.Generator().manual_seed(seed)`` replays it."""
    seed = zlib.crc32(request.node.name.encode())
    print(f"seed {seed} for {request.node.name}")
    return torch.Generator().manual_seed(seed)


def _rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double().cpu(), ref.double().cpu()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def _inv_freq(rot_dims: int, theta: float = 10000.0) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, rot_dims, 2, dtype=torch.float32) / rot_dims)


def _ring_inputs(gen, b, hq, hkv, c, s, d, rot, dtype, fill=1.0, offset=0):
    """A ring cache of S slots with round(fill * S) kept tokens at positions offset.. in a
    random slot order (a wrapped ring), the rest empty (-1); the C queries are the newest
    tokens, whose keys are already in their slots (causal inside the chunk)."""
    kept = max(c, round(fill * s))
    slot_pos = torch.full((s,), -1, dtype=torch.int64)
    slots = torch.randperm(s, generator=gen)[:kept]
    slot_pos[slots] = torch.arange(offset, offset + kept)
    q_pos = torch.arange(offset + kept - c, offset + kept)
    q = torch.randn(b, hq, c, d, generator=gen).to(dtype)
    k = torch.randn(b, hkv, s, d, generator=gen).to(dtype)
    v = torch.randn(b, hkv, s, d, generator=gen).to(dtype)
    args = (q, k, v, slot_pos, q_pos, _inv_freq(rot))
    return tuple(t.to(DEVICE) for t in args)


# (B, Hq, Hkv, C, S, D, rotary dims, dtype, fill): odd lengths, GQA 1/3/4/8, D 64/96/128,
# partial rotary, partially filled caches; all rings are wrapped (slot order != position order).
RING_CASES = [
    (1, 4, 4, 1, 5, 64, 64, torch.float32, 1.0),
    (1, 3, 1, 3, 33, 64, 32, torch.bfloat16, 0.6),
    (2, 8, 2, 17, 33, 96, 96, torch.float32, 0.8),
    (1, 8, 1, 1, 70, 128, 128, torch.bfloat16, 1.0),
    (1, 6, 2, 3, 70, 96, 48, torch.bfloat16, 0.5),
    (1, 4, 1, 17, 70, 128, 64, torch.float16, 0.9),
    (2, 3, 3, 5, 5, 128, 128, torch.bfloat16, 1.0),
]


@pytest.mark.parametrize(
    "b,hq,hkv,c,s,d,rot,dtype,fill", RING_CASES, ids=lambda v: str(v).replace("torch.", "")
)
def test_ring_attention_matches_reference(gen, b, hq, hkv, c, s, d, rot, dtype, fill):
    args = _ring_inputs(gen, b, hq, hkv, c, s, d, rot, dtype, fill=fill, offset=3)
    out = ring_attention_triton(*args, d**-0.5)
    ref = ring_attention_reference(*args, d**-0.5)
    assert out.shape == ref.shape and out.dtype == dtype
    assert _rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("splits", [2, 3, 100])
def test_ring_attention_key_splits_match_reference(gen, splits):
    """Flash-decoding: partial results over key splits, then the combine kernel."""
    args = _ring_inputs(gen, 1, 8, 2, 1, 70, 64, 64, torch.float32, fill=0.7)
    out = ring_attention_triton(*args, 0.125, num_splits=splits)
    assert _rel_err(out, ring_attention_reference(*args, 0.125)) < TOL[torch.float32]


def test_ring_attention_rope_scale(gen):
    """HF's attention_scaling multiplies cos and sin (so q.k scales by its square)."""
    args = _ring_inputs(gen, 1, 4, 2, 3, 33, 64, 64, torch.float32, fill=0.9)
    out = ring_attention_triton(*args, 0.125, 1.3)
    assert _rel_err(out, ring_attention_reference(*args, 0.125, 1.3)) < TOL[torch.float32]


def test_ring_attention_strided_inputs(gen):
    """The engine passes q as a transposed projection and k/v as views of a larger buffer."""
    q, k, v, slot_pos, q_pos, inv_freq = _ring_inputs(gen, 2, 6, 2, 3, 33, 64, 64, torch.bfloat16)
    q = q.transpose(1, 2).contiguous().transpose(1, 2)  # (B, Hq, C, D) with C-major strides
    k = torch.cat((k, torch.randn_like(k[:, :, :7])), dim=2)[:, :, :33]  # slice of a bigger ring
    v = v.permute(2, 0, 1, 3).contiguous().permute(1, 2, 0, 3)  # slot-major storage
    assert not (q.is_contiguous() or k.is_contiguous() or v.is_contiguous())
    args = (q, k, v, slot_pos, q_pos, inv_freq)
    out = ring_attention_triton(*args, 0.125)
    assert _rel_err(out, ring_attention_reference(*args, 0.125)) < TOL[torch.bfloat16]


def test_gemfilter_scores_strided_inputs(gen):
    """GemFilter passes q[:, :, -1] of a projection and keys transposed from [B, N, Hkv, D]."""
    q = torch.randn(2, 8, 5, 64, generator=gen).to(DEVICE)[:, :, -1]  # (B, Hq, D), strided
    keys = torch.randn(2, 45, 2, 64, generator=gen).to(DEVICE).transpose(1, 2)  # (B, Hkv, N, D)
    out = gemfilter_scores_triton(q, keys, 0.125)
    assert _rel_err(out, gemfilter_scores_reference(q, keys, 0.125)) < 1e-5


def test_ring_attention_large_positions(gen):
    """Angles of millions of radians: the kernel's range reduction must keep cos/sin exact."""
    args = _ring_inputs(gen, 1, 4, 2, 3, 33, 64, 64, torch.float32, offset=3_999_000)
    out = ring_attention_triton(*args, 0.125)
    assert _rel_err(out, ring_attention_reference(*args, 0.125)) < TOL[torch.float32]


@pytest.mark.parametrize("splits", [1, 3])
def test_query_that_sees_nothing_gets_zeros(gen, splits):
    q, k, v, slot_pos, _, inv_freq = _ring_inputs(
        gen, 1, 4, 2, 3, 33, 64, 64, torch.float32, fill=0.5, offset=10
    )
    q_pos = torch.tensor([2, 15, 40], device=DEVICE)  # 2 precedes every kept token
    out = ring_attention_triton(q, k, v, slot_pos, q_pos, inv_freq, 0.125, num_splits=splits)
    ref = ring_attention_reference(q, k, v, slot_pos, q_pos, inv_freq, 0.125)
    assert torch.all(out[:, :, 0] == 0)
    assert out[:, :, 1:].abs().sum() > 0
    assert _rel_err(out, ref) < TOL[torch.float32]

    empty = torch.full_like(slot_pos, -1)  # a cache with nothing in it
    assert torch.all(ring_attention_triton(q, k, v, empty, q_pos, inv_freq, 0.125) == 0)


# (B, Hq, Hkv, N, D, dtype)
SCORE_CASES = [
    (1, 4, 4, 5, 64, torch.float32),
    (2, 3, 1, 33, 96, torch.bfloat16),
    (1, 8, 2, 70, 128, torch.float32),
    (1, 32, 8, 70, 128, torch.bfloat16),
    (1, 24, 3, 33, 64, torch.float16),
]


@pytest.mark.parametrize(
    "b,hq,hkv,n,d,dtype", SCORE_CASES, ids=lambda v: str(v).replace("torch.", "")
)
def test_gemfilter_scores_match_reference(gen, b, hq, hkv, n, d, dtype):
    q = (3 * torch.randn(b, hq, d, generator=gen)).to(dtype).to(DEVICE)  # peaked softmaxes
    keys = torch.randn(b, hkv, n, d, generator=gen).to(dtype).to(DEVICE)
    out = gemfilter_scores_triton(q, keys, d**-0.5)
    ref = gemfilter_scores_reference(q, keys, d**-0.5)
    assert out.shape == (b, n) and out.dtype == torch.float32
    # The kernel's products are exact in fp32 as the reference's are: fp32-level agreement.
    assert _rel_err(out, ref) < 1e-5
    torch.testing.assert_close(out.sum(-1).cpu(), torch.full((b,), float(hq)), rtol=1e-5, atol=0)


def test_dispatcher_uses_reference_off_cuda_or_when_forced(gen, monkeypatch):
    args = _ring_inputs(gen, 1, 4, 2, 3, 33, 64, 64, torch.float32, fill=0.9)
    q, keys = args[0][:, :, -1].contiguous(), args[1]
    monkeypatch.setenv("SEPCLI_KERNELS", "reference")
    assert torch.equal(kernels.ring_attention(*args, 0.125), ring_attention_reference(*args, 0.125))
    assert torch.equal(
        kernels.gemfilter_scores(q, keys, 0.125), gemfilter_scores_reference(q, keys, 0.125)
    )
    monkeypatch.delenv("SEPCLI_KERNELS")
    assert kernels.use_triton(q) == CUDA
    assert (
        _rel_err(kernels.ring_attention(*args, 0.125), ring_attention_reference(*args, 0.125))
        < 1e-5
    )


def _good_ring():
    g = torch.Generator().manual_seed(0)
    return list(_ring_inputs(g, 1, 4, 2, 3, 8, 64, 64, torch.float32))


RING_BAD = {
    "q": lambda a: a.__setitem__(0, a[0][0]),  # 3-D
    "heads": lambda a: a.__setitem__(0, torch.zeros(1, 3, 3, 64, device=DEVICE)),
    "v_ring": lambda a: a.__setitem__(2, a[2][:, :, :4]),
    "k_ring dtype": lambda a: a.__setitem__(1, a[1].to(torch.float16)),
    "int64": lambda a: [a.__setitem__(i, a[i].to(torch.int64)) for i in (0, 1, 2)],
    "contiguous": lambda a: a.__setitem__(1, a[1].transpose(2, 3).contiguous().transpose(2, 3)),
    "slot_pos": lambda a: a.__setitem__(3, a[3][:5]),
    "slot_pos float": lambda a: a.__setitem__(3, a[3].float()),
    "q_pos": lambda a: a.__setitem__(4, a[4][None]),
    "rotary dims": lambda a: a.__setitem__(5, _inv_freq(160).to(DEVICE)),
    "device": lambda a: a.__setitem__(2, a[2].to("meta")),
}


@pytest.mark.parametrize("what", sorted(RING_BAD))
def test_ring_attention_launcher_rejects_bad_input(what):
    args = _good_ring()
    RING_BAD[what](args)
    with pytest.raises(ValueError):
        ring_attention_triton(*args, 0.125)


@pytest.mark.parametrize("scale,kw", [(-1.0, {}), (float("nan"), {}), (0.125, {"num_splits": 0})])
def test_ring_attention_launcher_rejects_bad_scalars(scale, kw):
    with pytest.raises(ValueError, match="scale|num_splits"):
        ring_attention_triton(*_good_ring(), scale, **kw)


SCORE_BAD = {
    "q_last dims": (torch.zeros(1, 4, 1, 64), torch.zeros(1, 2, 9, 64)),
    "heads": (torch.zeros(1, 3, 64), torch.zeros(1, 2, 9, 64)),
    "head dim": (torch.zeros(1, 4, 64), torch.zeros(1, 2, 9, 32)),
    "dtype": (torch.zeros(1, 4, 64), torch.zeros(1, 2, 9, 64, dtype=torch.bfloat16)),
    "int": (torch.zeros(1, 4, 64, dtype=torch.int32), torch.zeros(1, 2, 9, 64, dtype=torch.int32)),
    "contiguous": (torch.zeros(1, 4, 64), torch.zeros(1, 2, 64, 9).transpose(2, 3)),
    "device": (torch.zeros(1, 4, 64), torch.zeros(1, 2, 9, 64, device="meta")),
}


@pytest.mark.parametrize("what", sorted(SCORE_BAD))
def test_gemfilter_launcher_rejects_bad_input(what):
    q, keys = SCORE_BAD[what]
    q = q.to(DEVICE)
    keys = keys if keys.device.type == "meta" else keys.to(DEVICE)
    with pytest.raises(ValueError):
        gemfilter_scores_triton(q, keys, 0.125)


@pytest.mark.skipif(not CUDA, reason="native GPU shapes (Llama-3-8B heads) need CUDA")
@pytest.mark.parametrize("c,s", [(1, 4096), (64, 800), (256, 324)])
def test_ring_attention_llama3_shapes_on_gpu(gen, c, s):
    args = _ring_inputs(gen, 1, 32, 8, c, s, 128, 128, torch.bfloat16, fill=0.9)
    out = ring_attention_triton(*args, 128**-0.5)
    assert _rel_err(out, ring_attention_reference(*args, 128**-0.5)) < TOL[torch.bfloat16]


@pytest.mark.skipif(not CUDA, reason="native GPU shapes (Llama-3-8B heads) need CUDA")
def test_gemfilter_scores_long_on_gpu(gen):
    q = torch.randn(1, 32, 128, generator=gen).to(torch.bfloat16).to(DEVICE)
    keys = torch.randn(1, 8, 32768 + 17, 128, generator=gen).to(torch.bfloat16).to(DEVICE)
    out = gemfilter_scores_triton(q, keys, 128**-0.5)
    assert _rel_err(out, gemfilter_scores_reference(q, keys, 128**-0.5)) < 1e-5


def test_kernels_compile_for_h100_without_spills():
    """No GPU needed: Triton's bundled ptxas compiles every launcher configuration for sm_90;
    catches GPU-only breakage (types, tile shapes, register spills) the interpreter cannot."""
    pytest.importorskip("triton.backends.nvidia.compiler")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # this checkout's kernels, whichever checkout the venv has installed
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    bench = root / "bench" / "kernel_speed.py"
    run = subprocess.run(
        [sys.executable, str(bench), "--compile-only", "--arch", "90"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "no spills" in run.stdout
