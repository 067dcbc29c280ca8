"""Backends: one module each, chosen by file type with ``backend="auto"``.

The TensorRT and PyTorch modules are imported only when a file of theirs is loaded: an ONNX
deployment never pays for PyTorch (see :mod:`edgeseg._lazy`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgeseg import zoo
from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.runtime.backends.base import Backend, Capabilities, DeviceIO

BACKENDS = ("auto", "ort", "trt", "torch")
_SUFFIXES = {".onnx": "ort", ".engine": "trt", ".plan": "trt", ".pt": "torch", ".pth": "torch"}
_ORT_OPTIONS = ("threads", "spin", "exact_qdq", "fuse_resize", "io_binding")
_TORCH_OPTIONS = ("compile",)
_TRT_OPTIONS = ("rebuild",)


def file_backend(path: str | os.PathLike) -> str | None:
    """The backend a model file runs on by its type (``ort``, ``trt``, ``torch``), or None."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def _check_path(path: Path, backend: str) -> str:
    if backend not in BACKENDS:
        hint = did_you_mean(backend, BACKENDS)
        raise EdgesegError(
            f"unknown backend '{backend}'{hint}; choose one of: {', '.join(BACKENDS)}"
        )
    if not path.is_file():
        raise EdgesegError(
            f"model not found: {path}; pass a .onnx or .engine from 'edgeseg export' or a .pt "
            "from 'edgeseg train'"
        )
    kind = file_backend(path)
    if kind is None:
        raise EdgesegError(
            f"{path}: unsupported model type '{path.suffix}'; use a .onnx, .engine or .pt file"
        )
    if backend != "auto" and backend != kind:
        raise EdgesegError(
            f"backend '{backend}' cannot run a {path.suffix} file; use backend {kind} or auto"
        )
    return kind


def load_backend(
    path: str | os.PathLike,
    backend: str = "auto",
    device: str = "auto",
    *,
    precision: str | None = None,
    **options: Any,
) -> Backend:
    """Load ``path`` (.onnx, .engine or .pt, or the name of a shipped model: see
    :mod:`edgeseg.zoo`) with the named backend, or the natural one for its type.

    ``precision``: what to compute in; a ``.pt`` runs fp32 or (on CUDA) fp16, while an ONNX
    file or engine computes in the precision it was exported with (asking for another is an
    error). ``options`` go to the backend that takes them: ONNX Runtime ``threads``, ``spin``,
    ``exact_qdq``, ``fuse_resize``, ``io_binding``; PyTorch ``compile`` (an error for the
    others: an ONNX file or engine was compiled at export); TensorRT ``rebuild`` (default True:
    an engine of another TensorRT version or GPU is rebuilt from its ONNX; False: refused).
    """
    path = zoo.resolve(path, "checkpoint" if backend == "torch" else "onnx")
    kind = _check_path(path, backend)
    if options.get("compile") and kind != "torch":
        runner = "ONNX Runtime" if kind == "ort" else "TensorRT"
        raise EdgesegError(
            f"--compile (torch.compile) needs a .pt checkpoint; {path.name} runs on {runner} as "
            "it was exported: drop --compile, or give the .pt"
        )
    if kind == "torch":
        from edgeseg.runtime.backends.torch import TorchBackend

        kw = {k: v for k, v in options.items() if k in _TORCH_OPTIONS}
        return TorchBackend(path, device, precision or "fp32", **kw)
    if kind == "trt":
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        loaded: Backend = TensorRTBackend(
            path,
            device if device.startswith("cuda") else "cuda",
            **{k: v for k, v in options.items() if k in _TRT_OPTIONS},
        )
    else:
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        loaded = OnnxRuntimeBackend(
            path, device, **{k: v for k, v in options.items() if k in _ORT_OPTIONS}
        )
    if precision is not None and precision != loaded.caps.precision:
        loaded.close()
        raise EdgesegError(
            f"{path} computes in {loaded.caps.precision}, not {precision}: its precision was fixed "
            f"at export (edgeseg export --fp16 or --int8 writes the other files)"
        )
    return loaded


__all__ = ["BACKENDS", "Backend", "Capabilities", "DeviceIO", "file_backend", "load_backend"]
