"""A fake ``tensorrt`` module shaped like TensorRT 11's Python API, over :mod:`fake_gpu`.

What it keeps of TensorRT 11:

- strongly typed networks only: no ``EXPLICIT_BATCH`` or ``STRONGLY_TYPED`` creation flags, no
  ``BuilderFlag.FP16``/``INT8``, no calibrators; no ``execute_async_v2``/``execute_v2``, no
  binding-index API, no implicit batch. Asking for a removed name — on the module, a class or an
  instance, ``hasattr`` probes included — raises AttributeError and is recorded in
  ``removed_asked``; setting one on an instance is refused the same way;
- name-based I/O tensors; a name the engine does not have is refused (``set_*`` return False,
  ``get_tensor_mode`` is ``NONE``) and logged in ``errors``, as TensorRT's logger would;
- optimization profiles that bound the input shape: ``set_shape`` wants ranks that match and no
  negative sizes, a profile whose min <= opt <= max does not hold is refused by
  ``add_optimization_profile`` (-1), and a build without a valid profile returns None;
  ``set_input_shape`` returns False outside the profile, and output shapes keep ``-1`` until
  the input shape is set;
- engines with the ONNX's own tensor types (strongly typed): float32/float16 inputs, and outputs
  of any type, int64 labels of an argmax model included;
- ``execute_async_v3`` that takes the stream as an integer handle and enqueues the inference on
  that stream of the fake GPU (it runs in stream order, with the shapes and addresses set when it
  was enqueued), in the context the engine was deserialized in: an engine is the device's
  whose context was current (the CUDA runtime's device 0 where none was), and running it from
  another context fails;
- ``nptype`` that has no NumPy type for BF16/FP8/INT4/FP4.

The "engine" runs the ONNX model it was built from with ONNX Runtime, reading and writing fake
device memory, so results are real. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import enum
import json
from types import ModuleType

import numpy as np

from .fake_gpu import Op

__version__ = "11.1.0"

REMOVED = {  # module and class attributes TensorRT 10/11 removed
    "EXPLICIT_BATCH",
    "STRONGLY_TYPED",
    "FP16",
    "INT8",
    "FP8",
    "BF16",
    "INT4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "STRICT_TYPES",
    "int8_calibrator",
    "IInt8Calibrator",
    "IInt8EntropyCalibrator",
    "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator",
    "IInt8LegacyCalibrator",
    "CalibrationAlgoType",
    "execute_async_v2",
    "execute_v2",
    "get_binding_shape",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "device_memory_size",
}
REMOVED_MEMBERS = {  # instance attributes and methods TensorRT 10/11 removed
    *REMOVED,
    "execute",
    "execute_async",
    "execute_async_v2",
    "execute_v2",
    "num_bindings",
    "get_binding_index",
    "get_binding_name",
    "get_binding_shape",
    "set_binding_shape",
    "get_binding_dtype",
    "get_binding_format",
    "get_binding_vectorized_dim",
    "binding_is_input",
    "all_binding_shapes_specified",
    "all_shape_inputs_specified",
    "get_profile_shape",
    "max_batch_size",
    "max_workspace_size",
    "has_implicit_batch_dimension",
    "build_engine",
    "build_cuda_engine",
    "fp16_mode",
    "int8_mode",
    "strict_type_constraints",
    "get_calibration_profile",
    "set_calibration_profile",
}
calls: list[tuple] = []
removed_asked: list[str] = []
errors: list[str] = []  # what TensorRT's logger would report as errors
gpu = None  # the FakeGpu whose memory engines read and write; set by the test


def __getattr__(name: str):
    if name in REMOVED:
        removed_asked.append(name)
        raise AttributeError(f"module 'tensorrt' has no attribute {name!r} (TensorRT 11)")
    raise AttributeError(f"module 'tensorrt' has no attribute {name!r}")


class _Removed(type):
    def __getattr__(cls, name):
        if name in REMOVED or name in REMOVED_MEMBERS:
            removed_asked.append(name)
            raise AttributeError(f"{cls.__name__}.{name} was removed in TensorRT 11")
        raise AttributeError(name)


class _Api(metaclass=_Removed):
    """An object of the API: a removed name asked of (or set on) an instance is recorded and
    refused; like a pybind11 object, it takes no attributes it does not have."""

    _sealed = False

    def __getattr__(self, name):
        if name in REMOVED_MEMBERS:
            removed_asked.append(name)
            raise AttributeError(f"{type(self).__name__}.{name} was removed in TensorRT 11")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in REMOVED_MEMBERS:
            removed_asked.append(name)
            raise AttributeError(f"{type(self).__name__}.{name} was removed in TensorRT 11")
        if self._sealed and not hasattr(self, name):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")
        super().__setattr__(name, value)


def _error(message: str) -> None:
    errors.append(message)


class DataType(enum.Enum):
    FLOAT = "float32"
    HALF = "float16"
    INT8 = "int8"
    INT32 = "int32"
    BOOL = "bool"
    UINT8 = "uint8"
    INT64 = "int64"
    BF16 = "bf16"
    FP8 = "fp8"
    INT4 = "int4"
    FP4 = "fp4"


_ONNX_TYPES = {1: "FLOAT", 10: "HALF", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL"}
_ONNX_TYPES[16] = "BF16"


def nptype(dtype: DataType):
    if dtype in (DataType.BF16, DataType.FP8, DataType.INT4, DataType.FP4):
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return np.dtype(dtype.value).type


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(metaclass=_Removed):
    pass  # TensorRT 11: every network is strongly typed; no flags left that edgeseg may pass


class BuilderFlag(metaclass=_Removed):
    GPU_FALLBACK = 1
    REFIT = 2
    DIRECT_IO = 5


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Logger(_Api):
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

    def __init__(self, min_severity=WARNING) -> None:
        self.min_severity = min_severity


def _bind_context() -> object:
    """The context TensorRT's CUDA runtime works in on this thread: the current one, else (as
    the runtime does) device 0's primary context, made current."""
    if gpu.ctx is None:
        gpu._local.ctx = gpu.contexts[0]
    return gpu.ctx


class _Tensor(_Api):
    def __init__(self, name: str, shape, dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, tuple(shape), dtype
        self._sealed = True


class INetworkDefinition(_Api):
    def __init__(self, flags: int) -> None:
        self.flags, self.onnx = flags, None

    @property
    def num_inputs(self) -> int:
        return 1 if self.onnx else 0

    @property
    def num_outputs(self) -> int:
        return 1 if self.onnx else 0

    def get_input(self, i: int) -> _Tensor:
        o = self.onnx
        return _Tensor(o["input"], (-1, 3, *o["hw"]), DataType[o["in_dtype"]])

    def get_output(self, i: int) -> _Tensor:
        o = self.onnx
        return _Tensor(o["output"], o["out_shape"], DataType[o["out_dtype"]])


class ParserError(_Api):
    def __init__(self, desc: str) -> None:
        self._desc = desc

    def desc(self) -> str:
        return self._desc


class OnnxParser(_Api):
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self._errors = network, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, i: int) -> ParserError:
        return self._errors[i]

    def parse_from_file(self, path: str) -> bool:
        import onnx

        calls.append(("parse_from_file", path))
        model = onnx.load(path, load_external_data=False)
        inp, out = model.graph.input[0], model.graph.output[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        out_dims = [d.dim_value or -1 for d in out.type.tensor_type.shape.dim]
        types = {}
        for key, t in (("in_dtype", inp), ("out_dtype", out)):
            elem = t.type.tensor_type.elem_type
            if elem not in _ONNX_TYPES:
                self._errors.append(ParserError(f"unsupported ONNX type {elem} of {t.name}"))
                return False
            types[key] = _ONNX_TYPES[elem]
        self.network.onnx = {
            "path": path,
            "input": inp.name,
            "output": out.name,
            "hw": dims[2:],
            "out_shape": [-1, *out_dims[1:]],
            **types,
        }
        return True


class IOptimizationProfile(_Api):
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's names
        shapes = tuple(tuple(int(d) for d in s) for s in (min, opt, max))
        if len({len(s) for s in shapes}) != 1 or any(d < 0 for s in shapes for d in s):
            raise ValueError(f"invalid profile shapes for {input}: {shapes}")
        self.shapes[input] = shapes

    def get_shape(self, input: str):  # noqa: A002
        return self.shapes[input]

    def valid(self) -> bool:
        return bool(self.shapes) and all(
            all(lo <= o <= hi for lo, o, hi in zip(*s)) for s in self.shapes.values()
        )


class ITimingCache(_Api):
    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)

    def serialize(self) -> bytes:
        return b"timing-cache"


class IBuilderConfig(_Api):
    def __init__(self) -> None:
        self.profiles, self.pools, self.cache, self.flags = [], {}, None, set()

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self.pools[pool] = pool_size

    def set_flag(self, flag) -> None:
        self.flags.add(flag)

    def clear_flag(self, flag) -> None:
        self.flags.discard(flag)

    def get_flag(self, flag) -> bool:
        return flag in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        if not profile.valid():
            _error(f"optimization profile is invalid (min <= opt <= max): {profile.shapes}")
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
        return ITimingCache(serialized_timing_cache)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True


class Builder(_Api):
    def __init__(self, logger: Logger) -> None:
        calls.append(("Builder",))
        self.logger = logger
        self.ctx = _bind_context()

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        calls.append(("create_network", flags))
        if flags:
            raise ValueError("TensorRT 11 networks take no creation flags")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
        calls.append(("build_serialized_network",))
        o = network.onnx
        shapes = [p.shapes.get(o["input"]) for p in config.profiles]
        if not shapes or shapes[0] is None:
            _error(f"network has dynamic input {o['input']} but no valid optimization profile")
            return None
        lo, opt, hi = shapes[0]
        if any(tuple(s[1:]) != (3, *o["hw"]) for s in shapes[0]):
            _error(f"profile {shapes[0]} disagrees with the input's static dims {o['hw']}")
            return None
        plan = {**o, "profile": [lo, opt, hi], "device": gpu.device_of[self.ctx]}
        return json.dumps(plan).encode()


class Runtime(_Api):
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine: bytes):
        calls.append(("deserialize_cuda_engine",))
        try:
            plan = json.loads(serialized_engine)
        except ValueError:
            _error("deserialize_cuda_engine: not a plan")
            return None
        return ICudaEngine(plan, _bind_context())


class ICudaEngine(_Api):
    def __init__(self, plan: dict, ctx) -> None:
        import onnxruntime as ort

        self.plan, self.ctx = plan, ctx
        self.session = ort.InferenceSession(plan["path"], providers=["CPUExecutionProvider"])
        self.names = [plan["input"], plan["output"]]
        self._sealed = True

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def _known(self, name: str, call: str) -> bool:
        if name not in self.names:
            _error(f"{call}: no tensor named {name!r} (the engine has {self.names})")
            return False
        return True

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        if not self._known(name, "get_tensor_mode"):
            return TensorIOMode.NONE
        return TensorIOMode.INPUT if name == self.plan["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        if not self._known(name, "get_tensor_dtype"):
            return DataType.FLOAT  # what TensorRT returns for a name it does not have
        return DataType[self.plan["in_dtype" if name == self.plan["input"] else "out_dtype"]]

    def get_tensor_shape(self, name: str) -> tuple:
        if not self._known(name, "get_tensor_shape"):
            return ()
        lo, _, hi = self.plan["profile"]
        batch = lo[0] if lo[0] == hi[0] else -1
        if name == self.plan["input"]:
            return (batch, *self.plan.get("in_shape", lo[1:]))
        return (-1, *self._out_shape(1)[1:])

    def _out_shape(self, batch: int) -> tuple:
        out = self.plan.get("out_shape") or list(self.session.get_outputs()[0].shape)
        h, w = self.plan["hw"]
        if len(out) == 4:
            return (batch, out[1], *(d if d > 0 else s for d, s in zip(out[2:], (h, w))))
        return (batch, *(d if d > 0 else s for d, s in zip(out[1:], (h, w))))

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        if name != self.plan["input"] or profile_index != 0:
            _error(f"get_tensor_profile_shape: no profile {profile_index} of input {name!r}")
            return []
        return [tuple(s) for s in self.plan["profile"]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext(_Api):
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine, self.input_shape, self.addresses = engine, None, {}
        self._sealed = True

    def set_input_shape(self, name: str, shape) -> bool:
        calls.append(("set_input_shape", name, tuple(shape)))
        plan = self.engine.plan
        if name != plan["input"]:
            _error(f"set_input_shape: {name!r} is not an input of the engine")
            return False
        lo, _, hi = plan["profile"]
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.input_shape = tuple(int(d) for d in shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if not self.engine._known(name, "get_tensor_shape"):
            return ()
        if name == self.engine.plan["input"]:
            return self.input_shape or self.engine.get_tensor_shape(name)
        if self.input_shape is None:
            return self.engine.get_tensor_shape(name)  # -1 batch: not yet known
        return self.engine._out_shape(self.input_shape[0])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int):
            raise TypeError("set_tensor_address(): incompatible function arguments")
        if not self.engine._known(name, "set_tensor_address"):
            return False
        self.addresses[name] = memory
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int) or isinstance(stream_handle, bool):
            raise TypeError(
                "execute_async_v3(): incompatible function arguments (stream_handle: int)"
            )
        calls.append(("execute_async_v3", stream_handle))
        if self.input_shape is None or len(self.addresses) < len(self.engine.names):
            _error("execute_async_v3: an input shape or a tensor address is not set")
            return False
        stream, ctx = gpu.stream(stream_handle), self.engine.ctx
        if gpu.ctx is not ctx or stream is None or stream.ctx is not ctx:
            _error("execute_async_v3: not in the engine's CUDA context, or an invalid stream")
            return False
        shape, addresses = self.input_shape, dict(self.addresses)  # what this enqueue runs with
        out_shape = self.engine._out_shape(shape[0])
        return gpu._enqueue(stream, Op(lambda: self._run(ctx, shape, out_shape, addresses))) == 0

    def _run(self, ctx, shape, out_shape, addresses) -> None:
        plan = self.engine.plan
        x = gpu.device_array(
            addresses[plan["input"]], shape, nptype(DataType[plan["in_dtype"]]), ctx
        )
        feed = self.engine.session.get_inputs()[0]
        want = np.float16 if feed.type == "tensor(float16)" else np.float32
        y = self.engine.session.run(None, {plan["input"]: np.ascontiguousarray(x, want)})[0]
        out_type = nptype(DataType[plan["out_dtype"]])
        out = gpu.device_array(addresses[plan["output"]], out_shape, out_type, ctx)
        out[...] = y.reshape(out_shape).astype(out_type)


def install(fake_gpu) -> ModuleType:
    """This module, wired to ``fake_gpu``, with its logs cleared."""
    import sys

    global gpu
    gpu = fake_gpu
    calls.clear()
    removed_asked.clear()
    errors.clear()
    return sys.modules[__name__]
