"""The Backend contract (Polygraphy's runner is the model): one loaded model behind one API,
with its capabilities declared instead of probed.

- ``infer(batch)``: host arrays in and out, any batch size within ``caps``; every backend.
- ``device_io(n)`` / ``run_device(io, stream)``: inference on static device buffers, what the
  GPU frame pipeline (:mod:`edgeseg.runtime.gpu_pipeline`) drives; backends with
  ``caps.device_buffers``.
- ``close()`` (or ``with``): every resource released (sessions, engines, device memory).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.spec import ModelSpec

NAMES = ("ort", "trt", "torch")


@dataclass(frozen=True)
class Capabilities:
    """What a loaded backend can do; the Segmenter and the stream read these."""

    device: str  # "cpu" or "cuda:N"
    precision: str  # "fp32" | "fp16" | "int8": what the model computes in
    device_buffers: bool = False  # runs on device buffers: the GPU frame pipeline drives it
    upsample: int = 1  # the model's trailing x``upsample`` resize, left to post-processing
    min_batch: int = 1
    max_batch: int | None = None  # None: any batch size
    graph: str | None = None  # how a whole GPU step is captured as a CUDA graph: torch | driver

    def check_batch(self, n: int) -> None:
        if n < self.min_batch or (self.max_batch is not None and n > self.max_batch):
            top = "any" if self.max_batch is None else self.max_batch
            raise EdgesegError(
                f"batch {n} is outside what this model takes ({self.min_batch} to {top}); "
                "rebuild the engine with --dynamic MIN,OPT,MAX or lower the batch"
            )


@dataclass
class DeviceIO:
    """Static device buffers of one batch size: the pipeline preprocesses into ``input`` and
    post-processes from the pointer :meth:`Backend.run_device` returns."""

    batch: int
    input: int  # device pointer of (batch, 3, h, w) ``input_dtype``
    input_dtype: np.dtype
    output_shape: tuple[int, ...]  # (batch, C, h', w') logits or (batch, h', w') labels
    output_dtype: np.dtype
    output: int = 0  # device pointer, when it is static (TensorRT, ONNX Runtime)


class Backend(ABC):
    """One loaded model; see the module docstring for the contract."""

    name: ClassVar[str]  # one of NAMES
    spec: ModelSpec
    caps: Capabilities

    @property
    def device(self) -> str:
        return self.caps.device

    @property
    def upsample(self) -> int:
        return self.caps.upsample

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float32 batch -> logits or labels per the spec, on the host."""

    def device_io(self, batch: int) -> DeviceIO:
        """Static device buffers for ``batch`` frames (made once per batch size)."""
        raise EdgesegError(
            f"the {self.name} backend on {self.device} does not run on device buffers"
        )

    def run_device(self, io: DeviceIO, stream: Any) -> int:
        """Enqueue the model on ``stream`` over ``io``; returns the output's device pointer."""
        raise EdgesegError(
            f"the {self.name} backend on {self.device} does not run on device buffers"
        )

    def device_stream(self) -> Any:
        """A CUDA stream the backend is tied to (ONNX Runtime's compute stream), or None."""
        return None

    def close(self) -> None:  # noqa: B027 - a backend that holds nothing has nothing to release
        """Release every resource; the backend is unusable afterwards."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
