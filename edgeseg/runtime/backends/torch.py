"""PyTorch backend for ``.pt`` checkpoints: on CUDA when present, the GPU path we can verify.

On a GPU: channels-last weights, optional FP16 (``precision="fp16"``: weights and activations in
half, inputs written in half by the preprocess kernel), optional ``torch.compile`` (where Triton
is present), and the whole per-frame step capturable as one CUDA graph by the GPU frame pipeline
(``caps.graph == "torch"``: ``torch.cuda.graph`` keeps the model's intermediate tensors in a
private memory pool, so replays find them where the capture left them).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from edgeseg.device import resolve_device
from edgeseg.errors import EdgesegError
from edgeseg.models.checkpoint import load_model
from edgeseg.runtime.backends.base import Backend, Capabilities, DeviceIO

PRECISIONS = ("fp32", "fp16")


class TorchBackend(Backend):
    """Runs a training checkpoint directly (eager PyTorch, or compiled)."""

    name = "torch"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        precision: str = "fp32",
        compile: bool = False,
    ) -> None:
        if precision not in PRECISIONS:
            raise EdgesegError(
                f"precision '{precision}' is not one the torch backend runs; use fp32 or fp16"
            )
        dev = resolve_device(device)
        if precision == "fp16" and dev.type != "cuda":
            raise EdgesegError(
                "precision fp16 on the torch backend needs a CUDA device (CPUs run fp32)"
            )
        self.model, spec, _ = load_model(path, dev)
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        if dev.type == "cuda":
            _cuda_settings(precision)
            # NHWC: cuDNN's depthwise and 1x1 convolutions (and its FP16 tensor-core kernels)
            # run fastest in it.
            self.model = self.model.to(memory_format=torch.channels_last, dtype=self.dtype)
        if compile:
            self.model = _compiled(self.model)
        self.spec = spec
        self._dev = dev
        on_gpu = dev.type == "cuda"
        self.caps = Capabilities(
            str(dev), precision, device_buffers=on_gpu, graph="torch" if on_gpu else None
        )
        self._inputs: dict[int, torch.Tensor] = {}
        self._outputs: dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._dev, self.dtype)
        return self.model(x).float().cpu().numpy()

    @torch.no_grad()
    def infer_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in, device tensor out: no host copies."""
        return self.model(x.to(self.dtype))

    def device_io(self, batch: int) -> DeviceIO:
        if batch not in self._inputs:
            h, w = self.spec.input_hw
            # Zeros, not torch.empty: time_model runs on this buffer as it is. The block may
            # come from memory that work queued on torch's stream still uses, and the pipeline
            # writes it on its own stream: wait for that work once, here.
            x = torch.zeros((batch, 3, h, w), dtype=self.dtype, device=self._dev)
            torch.cuda.synchronize(self._dev)
            self._inputs[batch] = x
        x = self._inputs[batch]
        nd = np.dtype(np.float16 if self.dtype == torch.float16 else np.float32)
        out_shape = (batch, self.spec.num_classes, *self.spec.input_hw)
        return DeviceIO(batch, x.data_ptr(), nd, out_shape, nd)

    @torch.no_grad()
    def run_device(self, io: DeviceIO, stream: Any) -> int:
        """The model on ``stream``; its NCHW-contiguous output stays referenced here until the
        next call of the same batch size (under a graph capture it lives in the graph's pool)."""
        with torch.cuda.stream(torch.cuda.ExternalStream(int(stream), device=self._dev)):
            out = self.model(self._inputs[io.batch]).contiguous()
        if tuple(out.shape) != io.output_shape:
            raise EdgesegError(f"the model returned {tuple(out.shape)}, expected {io.output_shape}")
        self._outputs[io.batch] = out
        return out.data_ptr()

    def capture(self, stream: Any, enqueue) -> torch.cuda.CUDAGraph:
        """``enqueue`` (which runs on ``stream``) captured as a CUDA graph through PyTorch, so the
        model's allocations come from the graph's private pool and stay valid for replays."""
        graph = torch.cuda.CUDAGraph()
        ext = torch.cuda.ExternalStream(int(stream), device=self._dev)
        with torch.cuda.graph(graph, stream=ext, capture_error_mode="thread_local"):
            enqueue()
        return graph

    def replay(self, graph: torch.cuda.CUDAGraph, stream: Any) -> None:
        """Launch a captured step on ``stream`` (``replay`` launches on the current stream)."""
        with torch.cuda.stream(torch.cuda.ExternalStream(int(stream), device=self._dev)):
            graph.replay()

    def close(self) -> None:
        if self._inputs and self._dev.type == "cuda":
            torch.cuda.synchronize(self._dev)  # nothing queued may still use what is freed
        self._inputs.clear()
        self._outputs.clear()
        self.model = None


def _cuda_settings(precision: str) -> None:
    """cuDNN picks the fastest algorithm per input shape (shapes are fixed per batch size); fp32
    means fp32: PyTorch lets cuDNN convolutions (and matmuls, by its setting) use TF32, whose
    10-bit mantissa flips near-tie pixels against the CPU. Process-wide switches of PyTorch's."""
    torch.backends.cudnn.benchmark = True
    if precision == "fp32":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def _compiled(model: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` with its default inductor backend, which needs Triton on a GPU."""
    import importlib.util

    if next(model.parameters()).is_cuda and importlib.util.find_spec("triton") is None:
        raise EdgesegError(
            "compile on a GPU needs Triton (pip install triton); run without compile"
        )
    # CUDA graphs are ours to take (the whole frame step): inductor keeps to kernel fusion.
    return torch.compile(model, mode="max-autotune-no-cudagraphs", dynamic=False)
