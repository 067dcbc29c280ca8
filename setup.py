"""Build of edgeseg's C++ CPU extension (``edgeseg._cpu``); metadata lives in pyproject.toml.

setuptools + pybind11 rather than scikit-build-core or nanobind: the package already builds with
setuptools, the extension is one translation unit, and pybind11 is header-only, so ``pip install``
needs nothing but g++ (no CMake). Flags:
- ``-ffp-contract=off``: no fused multiply-add, so results match the NumPy reference bit for bit;
- ``-fopenmp``: rows are spread over threads (the GIL is released around every kernel);
- ``-march``: ``EDGESEG_CPU_ARCH`` (default ``native``: the extension is compiled on the machine
  that runs it; set e.g. ``x86-64-v2`` or ``armv8.2-a`` to build a wheel for other machines,
  or ``none`` for the compiler's default).

The CUDA sources (cpp_ext/cuda, cpp_ext/include) are copied into the package so that NVRTC can
compile them at first use on a GPU machine; nothing CUDA is compiled here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent.resolve()


def _compiler_accepts(flag: str) -> bool:
    cxx = os.environ.get("CXX", "c++")
    with tempfile.TemporaryDirectory() as d:
        src = Path(d, "t.cpp")
        src.write_text("int main() { return 0; }\n")
        try:
            r = subprocess.run(
                [cxx, flag, "-c", str(src), "-o", str(Path(d, "t.o"))], capture_output=True
            )
        except OSError:
            return False
        return r.returncode == 0


def _arch_flags() -> list[str]:
    arch = os.environ.get("EDGESEG_CPU_ARCH", "native")
    if arch == "none":
        return []
    flag = f"-march={arch}"
    return [flag] if _compiler_accepts(flag) else []


class BuildPyWithKernelSources(build_py):
    """Ship the .cu/.h kernel sources inside the package (edgeseg/runtime/_kernel_src)."""

    def run(self) -> None:
        super().run()
        dst = Path(self.build_lib, "edgeseg", "runtime", "_kernel_src")
        for sub in ("include", "cuda"):
            shutil.copytree(ROOT / "cpp_ext" / sub, dst / sub, dirs_exist_ok=True)


ext = Pybind11Extension(
    "edgeseg._cpu",
    ["cpp_ext/cpu/kernels.cpp"],
    include_dirs=["cpp_ext/include"],
    cxx_std=17,
    extra_compile_args=["-O3", "-ffp-contract=off", "-fopenmp", "-fno-math-errno", *_arch_flags()],
    extra_link_args=["-fopenmp"],
)

setup(ext_modules=[ext], cmdclass={"build_py": BuildPyWithKernelSources})
