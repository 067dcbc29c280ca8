"""TensorRT helpers shared by the engine builder (``edgeseg.export.engine``) and the TensorRT
backend: the ``tensorrt`` module (:data:`trt`), the engine's sidecar record (``<engine>.json``:
ModelSpec + build record), the check that a plan was built for this TensorRT version and GPU
(a foreign one is rebuilt through :data:`REBUILD`, or refused), and the GPU TensorRT works on.

Type-checked against TensorRT's own API (the tensorrt-stubs of TensorRT 10.13; run by
tests/export/test_tensorrt_types.py): :data:`trt` is the ``tensorrt`` module to the checker, so
every TensorRT name and call in these modules is checked. Where TensorRT 11 differs from 10.13,
the code branches on :func:`tensorrt_major`, and the checker reads both branches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeseg._lazy import require
from edgeseg.errors import EdgesegError

SIDECAR_FORMAT = "edgeseg-engine-v1"

# Rebuilds an engine from the ONNX its record names (edgeseg.export.engine.rebuild_engine): the
# builder lives in the export layer, above the runtime, which never imports it; edgeseg's
# __init__ registers it, as edgeseg.streaming registers the Segmenter's stream entry.
REBUILD: Callable[..., dict[str, Any]] | None = None


class _TensorRT:
    """The ``tensorrt`` module, imported at first use through :func:`import_tensorrt` (one line
    on how to install it when it is missing), never at this module's import."""

    def __getattr__(self, name: str) -> Any:
        return getattr(import_tensorrt(), name)


if TYPE_CHECKING:
    import tensorrt as trt
else:
    trt = _TensorRT()


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | os.PathLike) -> dict[str, Any]:
    """The ModelSpec + build record beside an engine; a clear error when missing or foreign."""
    path = sidecar_path(engine)
    if not Path(engine).is_file():
        raise EdgesegError(
            f"engine not found: {engine}; build one with 'edgeseg export CKPT --trt'"
        )
    if not path.is_file():
        raise EdgesegError(
            f"{engine} has no {path.name} beside it (the ModelSpec and build record); "
            "rebuild it with 'edgeseg export CKPT --trt'"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise EdgesegError(
            f"{path} is not valid JSON; rebuild the engine with 'edgeseg export CKPT --trt'"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise EdgesegError(
            f"{path} is not an edgeseg engine record; rebuild the engine with 'edgeseg export CKPT "
            "--trt'"
        )
    if not isinstance(meta.get("spec"), dict) or not isinstance(meta.get("tensorrt"), dict):
        raise EdgesegError(
            f"{path} lacks its spec or build record; rebuild the engine with 'edgeseg export CKPT "
            "--trt'"
        )
    return meta


def engine_mismatch(meta: dict[str, Any], trt_version: str, gpu_name: str) -> str | None:
    """Why the plan ``meta`` records cannot run here (``built with TensorRT 10.7.0, this machine
    has 11.1.0``; ``built for Orin, this GPU is ...``), or None when it was built for this one."""
    built = meta.get("tensorrt", {})
    if built.get("version") != trt_version:
        return f"built with TensorRT {built.get('version')}, this machine has {trt_version}"
    if built.get("gpu") != gpu_name:
        return f"built for {built.get('gpu')}, this GPU is {gpu_name}"
    return None


def check_engine(
    meta: dict[str, Any], trt_version: str, gpu_name: str, engine: str | os.PathLike
) -> None:
    """Refuse a plan built for another TensorRT version or GPU (it would fail or crash to load)."""
    why = engine_mismatch(meta, trt_version, gpu_name)
    if why is None:
        return
    if meta.get("tensorrt", {}).get("version") != trt_version:
        fix = "engines are not portable across versions: rebuild it here with"
    else:
        fix = "rebuild it on this machine with"
    raise EdgesegError(f"{engine} was {why}; {fix} 'edgeseg export CKPT --trt'")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or one line saying how to install it."""
    return require("tensorrt")


def tensorrt_major() -> int:
    """TensorRT's major version (10, 11...): where its API changed, code branches on this."""
    return int(trt.__version__.split(".", 1)[0])


def gpu_name(device: int = 0) -> str:
    """GPU ``device``'s name as the CUDA driver reports it (what engines are checked against)."""
    from edgeseg.runtime.cuda_driver import get_driver

    return get_driver(device).gpu_name()


def use_gpu(device: int = 0) -> str:
    """Make GPU ``device``'s context current on this thread, for TensorRT to build or load an
    engine in (TensorRT works in the calling thread's current context; a thread that last used
    another GPU would otherwise build or load on that one); returns the GPU's name."""
    from edgeseg.runtime.cuda_driver import get_driver

    driver = get_driver(device)
    driver.ensure_current()
    return driver.gpu_name()
