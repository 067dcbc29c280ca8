"""The TensorRT layer type-checks against TensorRT's own Python API: mypy (configured in
pyproject.toml's [tool.mypy]) over edgeseg/export/engine.py, edgeseg/runtime/backends/
tensorrt.py and edgeseg/runtime/engine_files.py, with the stubs of TensorRT 10.13
(tensorrt-stubs). Where TensorRT 11
differs, the code branches on ``tensorrt_major()`` and mypy reads both branches; the fake of
TensorRT 11 (tests/fakes/fake_tensorrt.py) covers what 11 removed.

The stubs live where only mypy looks (installed beside edgeseg they would make ``import
tensorrt`` succeed with an empty module; see the dev extra in pyproject.toml):

    pip install --no-deps --target build/typings tensorrt-stubs==10.13.0.35.1

or any folder named by ``$EDGESEG_TRT_STUBS``. tensorrt-stubs 10.13.0.35.1 (like every release
so far) has syntax errors mypy stops on: parameters named ``in`` and a parameter without a
default after defaulted ones. :func:`repaired_stubs` copies them with those lines mended.
"""

from __future__ import annotations

import ast
import hashlib
import keyword
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUBS = "tensorrt-stubs==10.13.0.35.1"
INSTALL = f"pip install --no-deps --target build/typings {STUBS}"
FILES = (
    "tensorrt/__init__.pyi",
    "tensorrt_bindings/__init__.pyi",
    "tensorrt_bindings/tensorrt.pyi",
)


def stubs_dir() -> Path | None:
    """A folder holding TensorRT's stubs (``tensorrt/``, ``tensorrt_bindings/``), or None."""
    for d in (os.environ.get("EDGESEG_TRT_STUBS"), REPO / "build" / "typings"):
        if d and all((Path(d) / f).is_file() for f in FILES):
            return Path(d)
    return None


def _mend(line: str) -> str:
    """A stub ``def`` line that does not parse, mended: a parameter named after a keyword gets
    a trailing underscore; one without a default after defaulted ones gets ``= ...``."""
    m = re.match(r"(\s*def \w+\()(.*)(\)(?: -> .*)?:\s*)$", line)
    if m is None:
        return line
    params, seen_default = [], False
    for p in re.split(r",\s*(?![^\[]*\])", m.group(2)):
        name = p.split(":")[0].split("=")[0].strip().lstrip("*")
        if keyword.iskeyword(name):
            p = p.replace(name, name + "_", 1)
        if "=" in p:
            seen_default = True
        elif seen_default and not p.strip().startswith("*"):
            p += " = ..."
        params.append(p)
    return m.group(1) + ", ".join(params) + m.group(3)


def repaired_stubs(src: Path, dst: Path) -> list[int]:
    """Copy the stubs from ``src`` into ``dst``, mending the lines that do not parse; returns
    their line numbers in tensorrt_bindings/tensorrt.pyi."""
    mended = []
    for f in FILES:
        lines = (src / f).read_text().splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith("def "):
                try:
                    ast.parse(line.strip() + "\n    ...")
                except SyntaxError:
                    lines[i] = _mend(line)
                    mended.append(i + 1)
        text = "\n".join(lines) + "\n"
        ast.parse(text)  # a new kind of fault in newer stubs: say so here, not in mypy
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        if not (dst / f).is_file() or (dst / f).read_text() != text:
            (dst / f).write_text(text)
    return mended


def _mypy(stubs: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MYPYPATH": str(stubs)}
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def stubs(request, tmp_path_factory) -> Path:
    pytest.importorskip("mypy", reason="mypy is not installed: pip install -e '.[dev]'")
    src = stubs_dir()
    if src is None:
        pytest.skip(f"TensorRT's stubs are not installed: {INSTALL}")
    key = hashlib.sha256((src / FILES[2]).read_bytes()).hexdigest()[:12]
    name = f"tensorrt-stubs-{key}"
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    # a stable path where pytest's cache is on, so mypy's own cache stays valid between runs
    dst = Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)
    mended = repaired_stubs(src, dst)
    assert mended, "the stubs parse as they are now: repaired_stubs can go"
    return dst


def test_the_tensorrt_layer_type_checks_against_tensorrts_api(stubs):
    run = _mypy(stubs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Success: no issues found in 3 source files" in run.stdout


def test_the_check_sees_tensorrts_api(stubs, tmp_path):
    """Not a vacuous pass (TensorRT typed as Any): TensorRT 8's execute_async_v2 and a tensor
    asked for by index in the backend are errors."""
    backend = REPO / "edgeseg/runtime/backends/tensorrt.py"
    text = backend.read_text()
    planted = text.replace(
        "self.context.execute_async_v3(self.drv.stream_handle(stream))",
        "self.context.execute_async_v2([io.input, io.output], self.drv.stream_handle(stream))",
    ).replace("e.get_tensor_dtype(self.in_name)", "e.get_tensor_dtype(0)")
    assert planted.count("execute_async_v2") == 1 and "get_tensor_dtype(0)" in planted
    shadow = tmp_path / "tensorrt.py"
    shadow.write_text(planted)
    run = _mypy(stubs, "--shadow-file", str(backend), str(shadow))
    assert run.returncode == 1, run.stdout + run.stderr
    assert '"IExecutionContext" has no attribute "execute_async_v2"' in run.stdout
    assert 'Argument 1 to "get_tensor_dtype" of "ICudaEngine" has incompatible type' in run.stdout


def test_installing_the_stubs_beside_edgeseg_would_fake_an_import_of_tensorrt(tmp_path):
    """Why the stubs are not in the dev extra: their tensorrt/ folder alone imports."""
    src = stubs_dir()
    if src is None:
        pytest.skip(f"TensorRT's stubs are not installed: {INSTALL}")
    shutil.copytree(src / "tensorrt", tmp_path / "tensorrt")
    code = "import tensorrt; print(hasattr(tensorrt, 'Builder'))"
    run = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0 and run.stdout.strip() == "False"
