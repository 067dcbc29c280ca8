"""The C++ extension builds warning-free for x86-64 and for a Jetson's aarch64, and its vector
loops (AVX here, NEON there: run under qemu-user) equal pixel_ops.h's per-pixel maths.

The aarch64 build is a cross-compile with the OS's g++-aarch64-linux-gnu at -march=armv8.2-a
(Jetson Xavier and Orin); .ci/run installs it and qemu-user-static. Python's own headers come
from this machine: both are LP64 Linux, which is all pybind11 needs of them to compile."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
TARGETS = {
    "native": ("g++", "-march=native"),
    "aarch64": ("aarch64-linux-gnu-g++", "-march=armv8.2-a"),
}


def _setup_flags() -> list[str]:
    """setup.py's extra_compile_args (its string literals; -march is per target here)."""
    tree = ast.parse((REPO / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "extra_compile_args":
            return [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
    raise AssertionError("setup.py has no extra_compile_args")


def _compiler(target: str) -> str:
    cxx = TARGETS[target][0]
    if shutil.which(cxx) is None:
        pytest.skip(f"{cxx} is not installed (apt-get install g++-aarch64-linux-gnu)")
    return cxx


def _compile(target: str, sources: list[str], out: Path, extra: list[str]) -> None:
    cxx, march = TARGETS[target]
    cmd = [
        cxx,
        "-std=c++17",
        *_setup_flags(),
        march,
        *WARNINGS,
        "-I",
        str(REPO / "cpp_ext" / "include"),
    ]
    r = subprocess.run([*cmd, *extra, *sources, "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_extension_compiles_without_a_warning(target, tmp_path):
    _compiler(target)
    pybind11 = pytest.importorskip("pybind11")
    includes = ["-I", pybind11.get_include(), "-I", sysconfig.get_paths()["include"]]
    src = str(REPO / "cpp_ext" / "cpu" / "kernels.cpp")
    _compile(target, [src], tmp_path / "kernels.o", ["-fPIC", "-c", *includes])


@pytest.mark.parametrize("target", list(TARGETS))
def test_the_vector_loops_equal_the_per_pixel_maths(target, tmp_path):
    _compiler(target)
    exe = tmp_path / f"kernel_check-{target}"
    _compile(target, [str(REPO / "cpp_ext" / "tests" / "kernel_check.cpp")], exe, ["-static"])
    run = [str(exe)]
    if target == "aarch64":
        qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
        if qemu is None:
            pytest.skip("qemu-user is not installed (apt-get install qemu-user-static)")
        run = [qemu, str(exe)]
    r = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    assert " 0 failures" in r.stdout
    if target == "aarch64":
        assert "lanes 4 __ARM_NEON" in r.stdout  # the NEON path is what ran
