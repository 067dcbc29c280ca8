"""ONNX Runtime backend: the best available execution provider, spec from the model's metadata."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edgeseg.device import cuda_index
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import Backend, Capabilities, DeviceIO
from edgeseg.spec import METADATA_KEY, ModelSpec

# Preferred first; TensorRT and CUDA EPs exist only in onnxruntime-gpu builds.
TRT_EP, CUDA_EP, CPU_EP = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)
GPU_PROVIDERS = (TRT_EP, CUDA_EP)
ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def onnx_proto() -> ModuleType:
    """ONNX's generated protobuf module (``ModelProto``, ``TensorProto``, ...), without running
    ``import onnx`` when nothing has yet.

    ``import onnx`` loads the whole package (helper, checker, shape inference and ml_dtypes, which
    alone can take a second to import): most of a stream's start-up, for a graph edit that needs
    only the message classes. The generated module is loaded from onnx's own file under a
    private name; protobuf hands out one class per message type, so what it parses is an
    ``onnx.ModelProto`` for every other user in the process.
    """
    global _ONNX_PB
    if "onnx" in sys.modules:
        return importlib.import_module("onnx.onnx_ml_pb2")
    if _ONNX_PB is None:
        found = importlib.util.find_spec("onnx")
        if found is None or not found.submodule_search_locations:
            raise EdgesegError("the onnx package is missing: pip install onnx")
        path = Path(next(iter(found.submodule_search_locations)), "onnx_ml_pb2.py")
        spec = importlib.util.spec_from_file_location("edgeseg._onnx_ml_pb2", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _ONNX_PB = module
    return _ONNX_PB


_ONNX_PB: ModuleType | None = None


def load_onnx_proto(path: str | os.PathLike):
    """An ONNX file's ``ModelProto`` (external weights not loaded); a clear error when the file
    is missing or not ONNX."""
    path = Path(path)
    try:
        return onnx_proto().ModelProto.FromString(path.read_bytes())
    except OSError as e:
        raise EdgesegError(f"{path} cannot be read ({e.strerror}); check the path") from None
    except Exception as e:
        raise EdgesegError(
            f"{path} is not a valid ONNX model ({type(e).__name__}); re-export it with 'edgeseg "
            "export'"
        ) from None


def read_onnx_spec(path: str | os.PathLike) -> ModelSpec:
    """Read the ModelSpec stored in an ONNX file's metadata without building a session."""
    model = load_onnx_proto(path)
    meta = {p.key: p.value for p in model.metadata_props}
    return _spec_from_meta(meta, Path(path))


def _spec_from_meta(meta: dict[str, str], path: Path) -> ModelSpec:
    if METADATA_KEY not in meta:
        raise EdgesegError(
            f"{path} has no edgeseg model spec (ONNX metadata key '{METADATA_KEY}'); "
            "export it with 'edgeseg export' so it carries its classes, size and normalisation"
        )
    return ModelSpec.from_json(meta[METADATA_KEY], origin=str(path))


def lift_trailing_resize(model) -> int:
    """Remove a trailing x``k`` bilinear Resize from an ONNX ModelProto in place; return ``k``
    (1 when the graph does not end in one, and the model is left as it was).

    Segmentation models end by resizing their logits to input size (mbv3_unet: x2, bisenetv2:
    x8). On ONNX Runtime CPU that last resize and the NCHWc-to-NCHW reorder of its large output
    are a large share of a small model's time (docs/kernels.md); the post-processing kernel does
    the same resize fused with the argmax at a fraction of the cost
    (``kernels.postprocess(upsample=k)``).
    Only the exact form that kernel reproduces is lifted: one Resize producing the only graph
    output, ``mode=linear``, ``coordinate_transformation_mode=half_pixel``, constant scales
    ``(1, 1, k, k)`` with integer ``k >= 2``.
    """
    graph = model.graph
    if len(graph.output) != 1:
        return 1
    producers = [n for n in graph.node if graph.output[0].name in n.output]
    if len(producers) != 1 or producers[0].op_type != "Resize" or len(producers[0].input) < 3:
        return 1
    node = producers[0]
    attrs = {a.name: a for a in node.attribute}
    text = {k: attrs[k].s for k in ("mode", "coordinate_transformation_mode") if k in attrs}
    if (
        text.get("mode", b"nearest") != b"linear"
        or text.get("coordinate_transformation_mode") != b"half_pixel"
    ):
        return 1
    if any(attrs[k].i for k in ("antialias", "exclude_outside") if k in attrs) or "axes" in attrs:
        return 1
    scales = _constant(graph, node.input[2])
    if (
        scales is None
        or scales.shape != (4,)
        or tuple(scales[:2]) != (1, 1)
        or scales[2] != scales[3]
    ):
        return 1
    k = int(scales[2])
    if k < 2 or k != scales[2] or sum(node.input[0] in n.input for n in graph.node) != 1:
        return 1  # not an integer factor, or its input feeds other nodes too
    graph.node.remove(node)
    for name in node.input[1:]:  # its roi/scales constants, unless something else reads them
        if name and not any(name in n.input for n in graph.node):
            _drop_constant(graph, name)
    out = graph.output[0]
    new = type(out)()  # the pre-resize logits, with the spatial sides divided by k
    new.CopyFrom(out)
    new.name = node.input[0]
    dims = new.type.tensor_type.shape.dim
    if len(dims) == 4:
        for d in dims[2:]:
            if d.HasField("dim_value") and d.dim_value:
                d.dim_value //= k
            else:
                d.dim_param = f"{d.dim_param or 'dim'}_before_resize"
    else:
        new.type.tensor_type.ClearField("shape")
    graph.output.remove(out)
    graph.output.append(new)
    return k


# ONNX TensorProto.DataType codes of the constants a Resize's scales may come as.
_TENSOR_DTYPES = {1: np.float32, 7: np.int64, 10: np.float16, 11: np.float64}
_TENSOR_FIELDS = {1: "float_data", 7: "int64_data", 11: "double_data"}


def _tensor_array(t) -> np.ndarray | None:
    """A small constant tensor as NumPy (None for a type the lift never needs)."""
    dtype = _TENSOR_DTYPES.get(t.data_type)
    if dtype is None:
        return None
    if t.raw_data:
        values = np.frombuffer(t.raw_data, dtype)
    elif t.data_type in _TENSOR_FIELDS:
        values = np.asarray(getattr(t, _TENSOR_FIELDS[t.data_type]), dtype)
    else:
        return None
    return values.reshape(tuple(t.dims))


def _constant(graph, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return _tensor_array(init)
    for n in graph.node:
        if (
            n.op_type == "Constant"
            and name in n.output
            and n.attribute
            and n.attribute[0].name == "value"
        ):
            return _tensor_array(n.attribute[0].t)
    return None


def _drop_constant(graph, name: str) -> None:
    for init in list(graph.initializer):
        if init.name == name:
            graph.initializer.remove(init)
    for n in list(graph.node):
        if n.op_type == "Constant" and name in n.output:
            graph.node.remove(n)


def trt_cache_dir(model_path: str | os.PathLike) -> Path:
    """Where the TensorRT execution provider keeps its engines and timing cache for a model:
    beside it, so a restart reuses them instead of building again."""
    p = Path(model_path)
    return p.with_name(f"{p.stem}.trt-cache")


def providers_for(
    device: str, available: list[str], model_path: str | os.PathLike, stream: int | None = None
) -> list[tuple[str, dict[str, str]]]:
    """Execution providers and their options for ``device``, best first.

    ``cuda:N`` becomes ``device_id`` N; ``stream`` (a ``cudaStream_t`` as an integer) is the
    compute stream ONNX Runtime must use, so its work is ordered with our kernels. The TensorRT
    EP keeps engine and timing caches beside the model and takes precision from the model
    itself (no fp16/int8 flags: a strongly typed network, like ``edgeseg export --trt``).
    """
    if device == "cpu":
        return [(CPU_EP, {})]
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if device.startswith("cuda") and not gpu:
        raise EdgesegError(
            f"device '{device}' needs onnxruntime-gpu (CUDA execution provider); pip uninstall "
            "onnxruntime && pip install 'onnxruntime-gpu>=1.27', or use device cpu"
        )
    common = {"device_id": str(cuda_index(device))}
    if stream is not None:
        common.update(has_user_compute_stream="1", user_compute_stream=str(stream))
    cache = str(trt_cache_dir(model_path))
    options = {
        TRT_EP: {
            **common,
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": cache,
        },
        CUDA_EP: dict(common),
    }
    return [(p, options[p]) for p in gpu] + [(CPU_EP, {})]


def check_providers(device: str, asked: list[str], got: list[str], path: str | os.PathLike) -> str:
    """The device the session really runs on; an error when a GPU was asked for and ONNX
    Runtime quietly fell back to its CPU provider (a CUDA library that failed to load)."""
    on_gpu = any(p in GPU_PROVIDERS for p in got)
    if device.startswith("cuda") and not on_gpu:
        raise EdgesegError(
            f"ONNX Runtime could not start {' or '.join(p for p in asked if p != CPU_EP)} for "
            f"{path} and fell back to the CPU; check that CUDA and cuDNN match onnxruntime-gpu "
            "(its log above says which library failed), or use device cpu"
        )
    if not on_gpu:
        return "cpu"
    return f"cuda:{cuda_index(device)}"


def _load_model(path: Path, fuse_resize: bool) -> tuple[str | bytes, int]:
    """The model to give ONNX Runtime (the file, or bytes with the trailing resize lifted) and
    the lifted upsample factor."""
    if not fuse_resize or not path.is_file():
        return str(path), 1
    try:
        proto = load_onnx_proto(path)
    except EdgesegError:  # unreadable here: ONNX Runtime reports it
        return str(path), 1
    external = onnx_proto().TensorProto.EXTERNAL
    if any(init.data_location == external for init in proto.graph.initializer):
        return str(path), 1  # weights in other files: leave the graph as written
    k = lift_trailing_resize(proto)
    return (proto.SerializeToString(), k) if k > 1 else (str(path), 1)


def _session_options(threads: int | None, spin: bool, exact_qdq: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # exact_qdq: no graph optimizations, so Q/DQ nodes run as written (quantize, dequantize,
    # float op) instead of being fused into integer kernels: the arithmetic TensorRT does
    # (int32 accumulation), free of the x86 U8S8 saturation that full-range S8 weights hit.
    level = ort.GraphOptimizationLevel
    opts.graph_optimization_level = level.ORT_DISABLE_ALL if exact_qdq else level.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _check_input_shape(shape: list, spec: ModelSpec, path: Path) -> None:
    """The graph's input must be what the ModelSpec says: buffers are sized from the spec."""
    h, w = spec.input_hw
    if len(shape) != 4 or any(
        isinstance(d, int) and d != want for d, want in zip(shape[1:], (3, h, w))
    ):
        raise EdgesegError(
            f"{path}: the graph's input is {shape} but its ModelSpec says (N, 3, {h}, {w}); "
            "re-export it with 'edgeseg export'"
        )


def _own_stream(device: str) -> tuple[Any, Any]:
    """(driver, a new CUDA stream) for ONNX Runtime to compute on, or (None, None) without
    cuda-python: the session then runs on its own stream and frames go through the host."""
    from edgeseg.runtime.cuda_driver import get_driver

    try:
        driver = get_driver(cuda_index(device))
    except EdgesegError as e:
        warnings.warn(
            f"{e}; ONNX Runtime's inputs and outputs go through the host",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, None
    return driver, driver.stream_create()


class OnnxRuntimeBackend(Backend):
    """Runs an exported ``.onnx`` with ONNX Runtime on the best available execution provider.

    ``upsample`` (``caps.upsample``): 1, or the factor of the trailing resize lifted out of the
    graph with ``fuse_resize=True`` — outputs are then logits at 1/``upsample`` of the model's
    output size, and post-processing resizes them (``kernels.postprocess(upsample=...)``).
    ``io_binding``: bind inputs and outputs to preallocated buffers (always on a GPU, where the
    frame pipeline hands device pointers; optional on the CPU).
    """

    name = "ort"

    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "auto",
        threads: int | None = None,
        spin: bool = True,
        exact_qdq: bool = False,
        fuse_resize: bool = False,
        io_binding: bool = False,
    ) -> None:
        """``threads``: intra-op threads (default: one per core). ``spin=False`` lets idle pool
        threads sleep instead of busy-waiting: slower for back-to-back calls, but it leaves the
        cores to the other stages of a pipeline (decode, encode) between inferences.
        ``fuse_resize``: lift the model's trailing logits resize out of the graph (see
        :func:`lift_trailing_resize`) for a caller whose post-processing does it."""
        import onnxruntime as ort

        self.path = Path(path)
        self._driver = self._stream = None
        wants_gpu = device != "cpu" and any(
            p in GPU_PROVIDERS for p in ort.get_available_providers()
        )
        if wants_gpu:  # ONNX Runtime's compute stream is ours: its work orders with our kernels
            self._driver, self._stream = _own_stream(device)
        stream = self._driver.stream_handle(self._stream) if self._driver else None
        providers = providers_for(device, ort.get_available_providers(), self.path, stream)
        model, upsample = _load_model(self.path, fuse_resize)
        self.session = self._session(model, _session_options(threads, spin, exact_qdq), providers)
        self.spec = _spec_from_meta(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.providers = self.session.get_providers()
        on = check_providers(device, [p for p, _ in providers], self.providers, self.path)
        shape = self.session.get_inputs()[0].shape
        _check_input_shape(shape, self.spec, self.path)
        batch = shape[0]
        fixed = batch if isinstance(batch, int) and batch > 0 else None
        self.caps = Capabilities(
            on,
            self.spec.precision,
            device_buffers=on != "cpu" and self._driver is not None,
            upsample=upsample,
            min_batch=fixed or 1,
            max_batch=fixed,
        )
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name
        self._out_dtype = np.dtype(ONNX_DTYPES.get(self.session.get_outputs()[0].type, np.float32))
        self._io_binding = io_binding or self.caps.device_buffers
        self._bound: dict[int, tuple[DeviceIO, object, list]] = {}

    def _session(self, model, opts, providers):
        import onnxruntime as ort

        try:
            names, options = [p for p, _ in providers], [o for _, o in providers]
            return ort.InferenceSession(
                model, sess_options=opts, providers=names, provider_options=options
            )
        except Exception as e:
            msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise EdgesegError(
                f"{self.path} could not be loaded by ONNX Runtime ({msg}); "
                "check the file is a complete .onnx written by 'edgeseg export'"
            ) from None

    def output_shape(self, batch: int) -> tuple[int, ...]:
        """The output's shape for ``batch`` frames (logits, or labels of an argmax model)."""
        h, w = self.spec.input_hw
        k = self.spec.output.stride * self.caps.upsample
        if self.spec.output.kind == "labels":
            return (batch, h // k, w // k)
        return (batch, self.spec.num_classes, h // k, w // k)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self.caps.check_batch(batch.shape[0])
        if not self._io_binding:
            return self.session.run([self._output], {self._input: batch})[0]
        if self.caps.device_buffers:  # on the GPU: through device buffers
            return self._infer_on_device(batch)
        out = np.empty(self.output_shape(batch.shape[0]), self._out_dtype)
        io = self.session.io_binding()
        io.bind_cpu_input(self._input, np.ascontiguousarray(batch, np.float32))
        io.bind_output(self._output, "cpu", 0, out.dtype, out.shape, out.ctypes.data)
        self.session.run_with_iobinding(io)
        return out

    def _infer_on_device(self, batch: np.ndarray) -> np.ndarray:
        drv, n = self._driver, batch.shape[0]
        io = self.device_io(n)
        host_in = np.ascontiguousarray(batch, np.float32)
        drv.memcpy_htod(io.input, host_in, self._stream)
        drv.stream_synchronize(self._stream)
        out_ptr = self.run_device(io, self._stream)
        out = np.empty(io.output_shape, io.output_dtype)
        drv.memcpy_dtoh(out, out_ptr, self._stream)
        drv.stream_synchronize(self._stream)
        return out

    def device_io(self, batch: int) -> DeviceIO:
        self.caps.check_batch(batch)
        if batch not in self._bound:
            drv = self._driver
            h, w = self.spec.input_hw
            shape = self.output_shape(batch)
            d_in = drv.mem_alloc(batch * 3 * h * w * 4)
            d_out = drv.mem_alloc(int(np.prod(shape)) * self._out_dtype.itemsize)
            binding = self.session.io_binding()
            index = cuda_index(self.device)
            binding.bind_input(self._input, "cuda", index, np.float32, (batch, 3, h, w), d_in.ptr)
            binding.bind_output(self._output, "cuda", index, self._out_dtype, shape, d_out.ptr)
            io = DeviceIO(batch, d_in.ptr, np.dtype(np.float32), shape, self._out_dtype, d_out.ptr)
            self._bound[batch] = (io, binding, [d_in, d_out])
        return self._bound[batch][0]

    def run_device(self, io: DeviceIO, stream) -> int:
        """ONNX Runtime runs on its compute stream (``device_stream()``, set at session creation)
        and returns when the outputs are written."""
        self.session.run_with_iobinding(self._bound[io.batch][1])
        return io.output

    def device_stream(self):
        return self._stream

    def close(self) -> None:
        for _, _, bufs in self._bound.values():
            for b in bufs:
                b.free()
        self._bound.clear()
        self.session = None
        if self._stream is not None:
            self._driver.stream_destroy(self._stream)
            self._stream = None
