"""Optional packages, imported on first use through :func:`require` — the one declared place.

Import policy (``tests/test_architecture.py`` enforces the parts that can be checked):

- **Optional packages** (the table below) are never imported at module level: a missing one
  costs nothing until the feature that needs it runs, and then gives one line saying how to
  install it instead of an ``ImportError`` traceback.
- **PyTorch** is a hard dependency, but the ONNX streaming path never loads it: ``edgeseg
  stream`` on a ``.onnx`` starts faster in less memory, and the garbage collector has far fewer
  objects to walk (start-up figures in benchmarks/RESULTS.md). The modules on that path —
  ``edgeseg.spec``, ``edgeseg.runtime`` except ``backends.torch``, ``edgeseg.data.synthetic``,
  the CLI's parser — import ``torch`` only inside the functions that need it; a test runs such
  a stream in a subprocess and checks ``torch`` never loaded. Nor does the ``onnx`` package
  (its import, ml_dtypes included, can take a second): the runtime reads and edits ONNX graphs
  through onnx's generated protobuf classes alone
  (:func:`edgeseg.runtime.backends.onnxruntime.onnx_proto`).
- **Spawned measuring processes** (``edgeseg bench``) import what a configuration needs inside
  the functions that measure it, so each configuration's peak memory is its own.
- Everything else imports at module level.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from edgeseg.errors import EdgesegError

# Top-level package -> how to get it.
OPTIONAL: dict[str, str] = {
    "tensorrt": "TensorRT is not installed: on a Jetson it comes with JetPack "
    "(sudo apt install python3-libnvinfer); on x86-64: pip install tensorrt (NVIDIA's index)",
    "cuda": "CUDA kernels need cuda-python 12.6.1 or newer (the cuda.bindings module): "
    "pip install 'cuda-python>=12.6.1'",
    "pycuda": "pycuda is not installed: pip install pycuda (needs the CUDA toolkit)",
    "timm": "timm encoders need timm: pip install timm (or pip install 'edgeseg[timm]')",
    # A dependency of edgeseg, but images made for inference (a GPU machine's) may lack it.
    "torch_pruning": "edgeseg prune needs torch-pruning: pip install 'torch-pruning>=1.4'",
    # nvidia-ml-py's module: edgeseg bench --power on an NVIDIA GPU other than a Jetson's.
    "pynvml": "GPU power needs NVML's Python binding: pip install nvidia-ml-py "
    "(or pip install 'edgeseg[power]')",
}


def require(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"tensorrt"``, ``"cuda.bindings.driver"``) or raise
    :class:`EdgesegError` with the install hint of its top-level package."""
    top = module.split(".", 1)[0]
    if top not in OPTIONAL:
        raise ValueError(f"{top!r} is not a declared optional package; add it to OPTIONAL")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise EdgesegError(OPTIONAL[top]) from None


def available(module: str) -> bool:
    """Whether ``module`` imports (without raising for a missing one)."""
    try:
        require(module)
    except EdgesegError:
        return False
    return True
