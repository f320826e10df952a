"""Fixtures shared by the C kernels' tests: this machine's build and the AVX2 and plain-C
builds (for older x86-64 CPUs; this one runs their code too)."""

from __future__ import annotations

import platform

import pytest

from sepcli.kernels import cpu as kernels_cpu
from sepcli.quant import cpu_kernels, cpu_kernels_missing

X86 = platform.machine().lower() in ("x86_64", "amd64")
MARCH = {"avx2": ("x86-64-v3", "AVX2"), "plain": ("x86-64", "plain C")}
BUILDS = ["native", "avx2", "plain"]


@pytest.fixture(autouse=True)
def c_kernels_anywhere(monkeypatch):
    """The C kernels on any CPU: without AVX512-VNNI or AVX2 they are correct but slower than
    torch's, and ``auto`` leaves them out (tested in test_cpu_kernels.py)."""
    monkeypatch.setenv("SEPCLI_KERNELS", "c")


@pytest.fixture
def native():
    kern = cpu_kernels()
    assert kern is not None, cpu_kernels_missing()  # every machine we run on has a C compiler
    print("build:", kern.isa)
    return kern


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    made = {}

    def get(name: str):
        if name not in made:
            march, isa = MARCH[name]
            if not X86:
                pytest.skip(f"-march={march} is an x86-64 build")
            made[name] = kernels_cpu.load(tmp_path_factory.mktemp(name), march=march)
            assert made[name] is not None and made[name].isa == isa
        return made[name]

    return get


def kernels_for(request, build: str):
    return (
        request.getfixturevalue("native")
        if build == "native"
        else request.getfixturevalue("builds")(build)
    )
