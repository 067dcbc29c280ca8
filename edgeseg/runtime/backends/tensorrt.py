"""TensorRT backend for ``.engine`` files built by ``edgeseg export --trt``.

TensorRT 10/11 name-based tensor API: ``set_input_shape`` (checked against the engine's
optimization profile), ``set_tensor_address``, ``execute_async_v3`` on the stream the caller
gives. Device memory and streams come from :mod:`edgeseg.runtime.cuda_driver` (cuda-python,
or pycuda, whose streams TensorRT gets as their integer handle). The frame path around the engine —
uint8 upload, our CUDA pre/post-processing, labels download, CUDA graphs — is the GPU frame
pipeline's (:mod:`edgeseg.runtime.gpu_pipeline`), shared with every GPU backend.

Everything an engine could get wrong is refused before it can corrupt device memory: a
ModelSpec sidecar that disagrees with the engine's tensor shapes, an input type the preprocess
kernel cannot write (only float32 and float16), an output type the post-processing cannot read,
a batch size outside the optimization profile.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.device import cuda_index
from edgeseg.errors import EdgesegError
from edgeseg.runtime import engine_files
from edgeseg.runtime.backends.base import Backend, Capabilities, DeviceIO
from edgeseg.runtime.cuda_driver import get_driver
from edgeseg.runtime.engine_files import (
    check_engine,
    engine_mismatch,
    import_tensorrt,
    read_sidecar,
    trt,
)
from edgeseg.spec import ModelSpec

INPUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float16))  # what the preprocess kernel writes
OUTPUT_DTYPES = {
    np.dtype(np.float32): "logits",
    np.dtype(np.float16): "logits",
    np.dtype(np.uint8): "labels",
    np.dtype(np.int32): "labels",
    np.dtype(np.int64): "labels",
}


def tensor_dtype(dtype: trt.DataType, what: str, path: Path) -> np.dtype:
    """NumPy dtype of a TensorRT tensor type, or one clear error (bf16, fp8, int4 have none)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except (TypeError, KeyError):
        raise EdgesegError(
            f"{path}: its {what} is {dtype}, which edgeseg cannot feed or read"
        ) from None


def dims(shape: trt.Dims) -> tuple[int, ...]:
    """A TensorRT shape as a tuple (Dims indexes and has a length; its stubs do not iterate)."""
    return tuple(int(shape[i]) for i in range(len(shape)))


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine on one GPU (``cuda:N``).

    ``rebuild``: an engine built by another TensorRT version or for another GPU is rebuilt in
    place from the ONNX its record names (False: refused, as ``--no-rebuild`` asks)."""

    name = "trt"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cuda",
        driver: Any = None,
        rebuild: bool = True,
    ) -> None:
        import_tensorrt()  # a clear error first when TensorRT is missing
        self.path = Path(path)
        meta = read_sidecar(self.path)
        index = cuda_index(device if device.startswith("cuda") else "cuda")
        self.drv = driver or get_driver(index)
        meta = self._runnable(meta, index, rebuild)
        self.spec = ModelSpec.from_dict(meta["spec"], origin=str(self.path))
        # TensorRT loads the engine into the thread's current context: this GPU's, even when
        # the thread last used another GPU (or none yet: TensorRT would take GPU 0).
        self.drv.ensure_current()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        # The stubs say ICudaEngine; TensorRT returns None for a plan it cannot load.
        engine: trt.ICudaEngine | None = self.runtime.deserialize_cuda_engine(
            self.path.read_bytes()
        )
        if engine is None:
            raise EdgesegError(
                f"TensorRT could not load {self.path} (corrupt, or built by another version); "
                "rebuild it with 'edgeseg export CKPT --trt'"
            )
        self.engine = engine
        self.context = engine.create_execution_context()
        self.in_name, self.out_name = self._io_names()
        self.in_dtype, self.out_dtype = self._dtypes()
        lo, hi = self._batch_range()
        self.caps = Capabilities(
            f"cuda:{index}",
            self.spec.precision,
            device_buffers=True,
            min_batch=lo,
            max_batch=hi,
            graph="driver" if self.drv.graphs else None,
        )
        self._bound: dict[int, tuple[DeviceIO, list]] = {}
        self._shape_batch: int | None = None
        self._stream = None
        self._pinned: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _runnable(self, meta: dict[str, Any], index: int, rebuild: bool) -> dict[str, Any]:
        """The record of an engine that runs on this TensorRT and GPU: ``meta`` itself, or the
        record of the engine rebuilt from its ONNX (``rebuild``); otherwise refused."""
        why = engine_mismatch(meta, trt.__version__, self.drv.gpu_name())
        rebuilder = engine_files.REBUILD if rebuild else None
        if why is None or rebuilder is None:
            # passes an engine of this machine; refuses a foreign one, saying how to rebuild it
            check_engine(meta, trt.__version__, self.drv.gpu_name(), self.path)
            return meta
        rebuilder(self.path, meta, why, device=index)
        return read_sidecar(self.path)

    def _io_names(self) -> tuple[str, str]:
        e = self.engine
        names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
        ins = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if e.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(ins) != 1 or len(outs) != 1:
            raise EdgesegError(
                f"{self.path}: expected one input and one output tensor, got {ins} / {outs}"
            )
        return ins[0], outs[0]

    def _dtypes(self) -> tuple[np.dtype, np.dtype]:
        e = self.engine
        din = tensor_dtype(e.get_tensor_dtype(self.in_name), "input type", self.path)
        dout = tensor_dtype(e.get_tensor_dtype(self.out_name), "output type", self.path)
        if din not in INPUT_DTYPES:
            raise EdgesegError(
                f"{self.path}: its input is {din}, but edgeseg's preprocessing writes float32 or "
                "float16; export the model with a float input (edgeseg export, optionally --fp16)"
            )
        if OUTPUT_DTYPES.get(dout) != self.spec.output.kind:
            raise EdgesegError(
                f"{self.path}: its output is {dout}, not the {self.spec.output.kind} its ModelSpec "
                "describes (float logits, or uint8/int32/int64 labels); rebuild it with 'edgeseg "
                "export --trt'"
            )
        return din, dout

    def _batch_range(self) -> tuple[int, int]:
        """Batch sizes the engine takes; its input's other dimensions must match the ModelSpec."""
        shape = dims(self.engine.get_tensor_shape(self.in_name))
        h, w = self.spec.input_hw
        if len(shape) != 4 or tuple(shape[1:]) != (3, h, w):
            raise EdgesegError(
                f"{self.path}: the engine's input is {shape} but its ModelSpec says (N, 3, {h}, "
                f"{w}); "
                "the sidecar belongs to another engine: rebuild with 'edgeseg export --trt'"
            )
        if shape[0] != -1:
            return shape[0], shape[0]
        lo, _, hi = self.engine.get_tensor_profile_shape(self.in_name, 0)
        return int(lo[0]), int(hi[0])

    def _set_batch(self, batch: int) -> tuple[int, ...]:
        """Input shape for ``batch`` set and checked; returns the output shape it implies."""
        h, w = self.spec.input_hw
        if not self.context.set_input_shape(self.in_name, (batch, 3, h, w)):
            raise EdgesegError(
                f"{self.path}: TensorRT refused batch {batch} (the engine takes "
                f"{self.caps.min_batch} to {self.caps.max_batch})"
            )
        out = dims(self.context.get_tensor_shape(self.out_name))
        if not out or any(d < 0 for d in out) or out[0] != batch:
            raise EdgesegError(
                f"{self.path}: TensorRT left the output shape {out} for batch {batch}"
            )
        self._shape_batch = batch
        return out

    def device_io(self, batch: int) -> DeviceIO:
        self.caps.check_batch(batch)
        if batch not in self._bound:
            out_shape = self._set_batch(batch)
            h, w = self.spec.input_hw
            d_in = self.drv.mem_alloc(batch * 3 * h * w * self.in_dtype.itemsize)
            d_out = self.drv.mem_alloc(int(np.prod(out_shape)) * self.out_dtype.itemsize)
            io = DeviceIO(batch, d_in.ptr, self.in_dtype, out_shape, self.out_dtype, d_out.ptr)
            self._bound[batch] = (io, [d_in, d_out])
        return self._bound[batch][0]

    def run_device(self, io: DeviceIO, stream: Any) -> int:
        if self._shape_batch != io.batch:  # another batch size ran last: its shape and buffers
            self._set_batch(io.batch)
        for name, ptr in ((self.in_name, io.input), (self.out_name, io.output)):
            if not self.context.set_tensor_address(name, ptr):
                raise EdgesegError(f"{self.path}: TensorRT refused the device buffer of {name}")
        if not self.context.execute_async_v3(self.drv.stream_handle(stream)):
            raise EdgesegError(f"TensorRT failed to run {self.path} (see the TensorRT log above)")
        return io.output

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """(N, 3, H, W) float batch -> the engine's output, through page-locked host buffers."""
        n = batch.shape[0]
        h, w = self.spec.input_hw
        if batch.shape != (n, 3, h, w):
            raise EdgesegError(f"this engine takes (N, 3, {h}, {w}) inputs, got {batch.shape}")
        # Ask the driver, not our record: PyTorch or the CUDA runtime may have switched this
        # thread's GPU since (the GPU pipeline does the same once a step).
        self.drv.ensure_current()
        io = self.device_io(n)
        if self._stream is None:
            self._stream = self.drv.stream_create()
        if n not in self._pinned:
            self._pinned[n] = (
                self.drv.pinned_empty(batch.shape, self.in_dtype),
                self.drv.pinned_empty(io.output_shape, self.out_dtype),
            )
        h_in, h_out = self._pinned[n]
        h_in[...] = batch
        self.drv.memcpy_htod(io.input, h_in, self._stream)
        out = self.run_device(io, self._stream)
        self.drv.memcpy_dtoh(h_out, out, self._stream)
        self.drv.stream_synchronize(self._stream)
        return h_out.copy()

    def close(self) -> None:
        for _, bufs in self._bound.values():
            for b in bufs:
                b.free()
        self._bound.clear()
        self._pinned.clear()
        if self._stream is not None:
            self.drv.stream_destroy(self._stream)
            self._stream = None
        for name in ("context", "engine", "runtime"):  # TensorRT's objects, in that order
            vars(self).pop(name, None)
