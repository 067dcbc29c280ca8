"""TensorRT backend for ``.engine`` files built by ``edgeseg export --trt``.

TensorRT 10/11 name-based tensor API: ``set_input_shape``, ``set_tensor_address``,
``execute_async_v3`` on our own stream. Device memory, the stream and page-locked host buffers
come from :mod:`edgeseg.runtime.cuda` (cuda-python, or pycuda where installed). The engine's
neighbours in the GPU pipeline are the CUDA kernels: ``segment()`` uploads a uint8 frame,
preprocesses into the engine's input buffer, executes, and postprocesses the output buffer into
uint8 labels (and the overlay) before the only download — no float tensor crosses PCIe.
``cuda_graph=True`` captures the execution once and replays it (less launch overhead).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime.trt import check_engine, gpu_name, import_tensorrt, read_sidecar
from edgeseg.spec import ModelSpec

_KIND = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(np.uint8): "u8",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
}


class TensorRTBackend:
    """Runs a serialized TensorRT engine (batch 1) on one GPU."""

    name = "tensorrt"

    def __init__(
        self, path: str | os.PathLike, device: str = "cuda", cuda_graph: bool = False
    ) -> None:
        from edgeseg.runtime.cuda import get_driver

        trt = import_tensorrt()
        self.path = Path(path)
        meta = read_sidecar(self.path)
        self.spec = ModelSpec.from_dict(meta["spec"], origin=str(self.path))
        index = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        self.drv = get_driver(index)
        check_engine(meta, trt.__version__, gpu_name(index), self.path)
        self.device = f"cuda:{index}"
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EdgesegError(
                f"TensorRT could not load {self.path} (corrupt, or built by another version); "
                "rebuild it with 'edgeseg export CKPT --trt'"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise EdgesegError(
                f"{self.path}: expected one input and one output tensor, got {ins} / {outs}"
            )
        self.in_name, self.out_name = ins[0], outs[0]
        h, w = self.spec.input_hw
        self.context.set_input_shape(self.in_name, (1, 3, h, w))
        self.in_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.in_name)))
        self.out_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(self.out_name)))
        self.out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        self.stream = self.drv.stream_create()
        self.d_in = self.drv.mem_alloc(3 * h * w * self.in_dtype.itemsize)
        self.d_out = self.drv.mem_alloc(int(np.prod(self.out_shape)) * self.out_dtype.itemsize)
        self.h_in = self.drv.pinned_empty((1, 3, h, w), self.in_dtype)
        self.h_out = self.drv.pinned_empty(self.out_shape, self.out_dtype)
        self.context.set_tensor_address(self.in_name, self.d_in.ptr)
        self.context.set_tensor_address(self.out_name, self.d_out.ptr)
        self.cuda_graph = cuda_graph and hasattr(self.drv, "cu")
        self._graph_exec = None
        self._frame_hw: tuple[int, int] | None = None
        from edgeseg.runtime.kernels.cuda import CudaKernels

        self._kernels = CudaKernels(self.drv)
        self._events = [self.drv.event_create() for _ in range(4)]
        self._table_key: float | None = None

    # -- model only
    def _execute(self) -> None:
        if self._graph_exec is not None:
            self.drv.cu.cuGraphLaunch(self._graph_exec, self.stream)
            return
        if not self.context.execute_async_v3(self.stream):
            raise EdgesegError("TensorRT execution failed (see the TensorRT log above)")
        if self.cuda_graph:
            self._capture_graph()

    def _capture_graph(self) -> None:
        """After one normal enqueue (TensorRT's lazy set-up), capture the execution as a graph."""
        cu = self.drv.cu
        self.drv.stream_synchronize(self.stream)
        cu.cuStreamBeginCapture(
            self.stream, cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        )
        self.context.execute_async_v3(self.stream)
        err, graph = cu.cuStreamEndCapture(self.stream)
        if int(err) == 0:
            err, exec_ = cu.cuGraphInstantiate(graph, 0)
            if int(err) == 0:
                self._graph_exec = exec_
        self.cuda_graph = self._graph_exec is not None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(1, 3, H, W) float batch -> the engine's output, through host buffers (Backend API)."""
        if batch.shape != self.h_in.shape:
            raise EdgesegError(f"this engine takes {self.h_in.shape} inputs, got {batch.shape}")
        self.h_in[...] = batch
        self.drv.memcpy_htod(self.d_in.ptr, self.h_in, self.stream)
        self._execute()
        self.drv.memcpy_dtoh(self.h_out, self.d_out.ptr, self.stream)
        self.drv.stream_synchronize(self.stream)
        return self.h_out.copy()

    # -- the whole GPU pipeline
    def _frame_buffers(self, hw: tuple[int, int]) -> None:
        if self._frame_hw == hw:
            return
        H, W = hw
        h, w = self.spec.input_hw
        self.h_frame = self.drv.pinned_empty((H, W, 3), np.uint8)
        self.h_labels = self.drv.pinned_empty((H, W), np.uint8)
        self.h_vis = self.drv.pinned_empty((H, W, 3), np.uint8)
        self.d_frame = self.drv.mem_alloc(H * W * 3)
        self.d_labels = self.drv.mem_alloc(H * W)
        self.d_vis = self.drv.mem_alloc(H * W * 3)
        self.d_small = self.drv.mem_alloc(h * w)
        self._frame_hw = hw

    def segment(
        self, frame_bgr: np.ndarray, mode: str = "nearest", overlay_alpha: float | None = None
    ):
        """uint8 BGR frame -> (labels, overlay or None, timings_ms), all processing on the GPU."""
        from edgeseg.runtime.kernels.cuda import colour_table

        k, e = self._kernels, self._events
        H, W = frame_bgr.shape[:2]
        self._frame_buffers((H, W))
        t0 = time.perf_counter()
        self.h_frame[...] = frame_bgr
        self.drv.event_record(e[0], self.stream)
        self.drv.memcpy_htod(self.d_frame.ptr, self.h_frame, self.stream)
        k.preprocess(
            self.d_frame.ptr,
            (H, W),
            W * 3,
            self.d_in.ptr,
            self.spec.input_hw,
            self.spec.input.mean,
            self.spec.input.std,
            self.in_dtype == np.float16,
            self.stream,
        )
        self.drv.event_record(e[1], self.stream)
        self._execute()
        self.drv.event_record(e[2], self.stream)
        kind = _KIND[self.out_dtype]
        classes = self.out_shape[1] if len(self.out_shape) == 4 else 1
        table_ptr = keep_q = 0
        if overlay_alpha is not None:
            key = float(overlay_alpha)
            if self._table_key != key:
                table, keep_q = colour_table(self.spec.palette, overlay_alpha)
                self._table = self.drv.mem_alloc(table.nbytes)
                self.drv.memcpy_htod(self._table.ptr, table, self.stream)
                self._table_key, self._keep_q = key, keep_q
            table_ptr, keep_q = self._table.ptr, self._keep_q
        k.postprocess(
            self.d_out.ptr,
            kind,
            classes,
            self.spec.input_hw,
            self.d_labels.ptr,
            (H, W),
            self.d_small.ptr,
            mode,
            self.d_frame.ptr if overlay_alpha is not None else 0,
            W * 3,
            self.d_vis.ptr if overlay_alpha is not None else 0,
            table_ptr,
            keep_q,
            self.stream,
        )
        self.drv.memcpy_dtoh(self.h_labels, self.d_labels.ptr, self.stream)
        if overlay_alpha is not None:
            self.drv.memcpy_dtoh(self.h_vis, self.d_vis.ptr, self.stream)
        self.drv.event_record(e[3], self.stream)
        self.drv.stream_synchronize(self.stream)
        timings = {
            "pre": self.drv.event_elapsed_ms(e[0], e[1]),
            "infer": self.drv.event_elapsed_ms(e[1], e[2]),
            "post": self.drv.event_elapsed_ms(e[2], e[3]),
            "total": (time.perf_counter() - t0) * 1e3,
        }
        vis = self.h_vis.copy() if overlay_alpha is not None else None
        return self.h_labels.copy(), vis, timings
