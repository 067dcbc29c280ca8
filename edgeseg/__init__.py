"""edgeseg: real-time semantic segmentation for the edge."""

from edgeseg.errors import EdgesegError
from edgeseg.runtime import Segmenter, SegResult
from edgeseg.runtime import engine_files as _engine_files
from edgeseg.spec import ModelSpec
from edgeseg.streaming import StreamConfig, StreamPipeline, stream

__version__ = "0.1.0"
__all__ = [
    "EdgesegError",
    "ModelSpec",
    "SegResult",
    "Segmenter",
    "StreamConfig",
    "StreamPipeline",
    "create_model",
    "list_models",
    "stream",
]


def _rebuild_engine(*args, **kwargs) -> dict:
    """:func:`edgeseg.export.engine.rebuild_engine`, imported when an engine needs it."""
    from edgeseg.export.engine import rebuild_engine

    return rebuild_engine(*args, **kwargs)


# The TensorRT backend rebuilds a foreign engine through this; the builder lives in the export
# layer, which the runtime never imports.
_engine_files.REBUILD = _rebuild_engine


def __getattr__(name: str):
    # The model registry needs PyTorch (seconds to import, and objects the garbage collector
    # then walks on every full collection): only training, export and .pt inference load it, not
    # a process that runs an ONNX model (see edgeseg/_lazy.py).
    if name in ("create_model", "list_models"):
        from edgeseg import models

        return getattr(models, name)
    raise AttributeError(f"module 'edgeseg' has no attribute {name!r}")
