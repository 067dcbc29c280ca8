"""Backends: one module each, chosen by file type with ``backend="auto"``."""

from __future__ import annotations

import os
from pathlib import Path

from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.runtime.backends.base import Backend

BACKENDS = ("auto", "ort", "trt", "torch")
_SUFFIXES = {".onnx": "ort", ".engine": "trt", ".plan": "trt", ".pt": "torch", ".pth": "torch"}


def file_backend(path: str | os.PathLike) -> str | None:
    """The backend a model file runs on by its type (``ort``, ``trt``, ``torch``), or None."""
    return _SUFFIXES.get(Path(path).suffix.lower())


def load_backend(
    path: str | os.PathLike, backend: str = "auto", device: str = "auto", **options
) -> Backend:
    """Load ``path`` (.onnx or .pt) with the named backend, or the natural one for its type.

    ``options`` go to the ONNX Runtime backend (``threads``, ``spin``, ``exact_qdq``,
    ``fuse_resize``); others ignore them.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise EdgesegError(
            f"unknown backend '{backend}'{did_you_mean(backend, BACKENDS)}; choose one of: "
            f"{', '.join(BACKENDS)}"
        )
    if not path.is_file():
        raise EdgesegError(
            f"model not found: {path}; pass a .onnx from 'edgeseg export' or a .pt from 'edgeseg "
            "train'"
        )
    kind = file_backend(path)
    if kind is None:
        raise EdgesegError(
            f"{path}: unsupported model type '{path.suffix}'; use a .onnx, .engine or .pt file"
        )
    if backend != "auto" and backend != kind:
        raise EdgesegError(
            f"backend '{backend}' cannot run a {path.suffix} file; use --backend {kind} or auto"
        )
    if kind == "trt":
        from edgeseg.runtime.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(
            path,
            device if device.startswith("cuda") else "cuda",
            cuda_graph=bool(options.get("cuda_graph", False)),
        )
    if kind == "ort":
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            path,
            device,
            **{
                k: v
                for k, v in options.items()
                if k in ("threads", "spin", "exact_qdq", "fuse_resize")
            },
        )
    from edgeseg.runtime.backends.torch import TorchBackend

    return TorchBackend(path, device)


__all__ = ["BACKENDS", "Backend", "file_backend", "load_backend"]
