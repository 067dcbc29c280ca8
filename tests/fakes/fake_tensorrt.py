"""A fake ``tensorrt`` module shaped like TensorRT 11's Python API, over :mod:`fake_gpu`.

What it keeps of TensorRT 11: strongly typed networks only (no ``EXPLICIT_BATCH`` or
``STRONGLY_TYPED`` creation flags, no ``BuilderFlag.FP16``/``INT8``, no calibrators: asking for
a removed name raises AttributeError and is recorded), name-based I/O tensors, optimization
profiles that bound the input shape (``set_input_shape`` returns False outside them, and output
shapes keep ``-1`` until the input shape is set), ``execute_async_v3`` that takes the stream as
an integer handle, ``nptype`` that has no NumPy type for BF16/FP8. The "engine" runs the ONNX
model it was built from with ONNX Runtime, reading and writing fake device memory, so results
are real. Every call is recorded in ``calls``.
"""

from __future__ import annotations

import enum
import json
from types import ModuleType

import numpy as np

__version__ = "11.1.0"

REMOVED = {
    "EXPLICIT_BATCH",
    "STRONGLY_TYPED",
    "FP16",
    "INT8",
    "FP8",
    "BF16",
    "INT4",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "IInt8Calibrator",
    "IInt8EntropyCalibrator2",
    "execute_async_v2",
    "execute_v2",
    "get_binding_shape",
    "platform_has_fast_fp16",
    "platform_has_fast_int8",
    "device_memory_size",
}
calls: list[tuple] = []
removed_asked: list[str] = []
gpu = None  # the FakeGpu whose memory engines read and write; set by the test


class _Removed(type):
    def __getattr__(cls, name):
        if name in REMOVED:
            removed_asked.append(name)
            raise AttributeError(f"{cls.__name__}.{name} was removed in TensorRT 11")
        raise AttributeError(name)


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


def nptype(dtype: DataType):
    if dtype in (DataType.BF16, DataType.FP8):
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


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class Logger:
    WARNING = 2

    def __init__(self, severity=WARNING) -> None:
        self.severity = severity


class _Tensor:
    def __init__(self, name: str, shape) -> None:
        self.name, self.shape = name, tuple(shape)


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags, self.onnx = flags, None

    def get_input(self, i: int) -> _Tensor:
        return _Tensor(self.onnx["input"], (-1, 3, *self.onnx["hw"]))


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        self.network, self.num_errors = network, 0

    def parse_from_file(self, path: str) -> bool:
        import onnx

        calls.append(("parse_from_file", path))
        model = onnx.load(path, load_external_data=False)
        inp = model.graph.input[0]
        dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
        self.network.onnx = {
            "path": path,
            "input": inp.name,
            "output": model.graph.output[0].name,
            "hw": dims[2:],
        }
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, name: str, lo, opt, hi) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class ITimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return b"timing-cache"


class IBuilderConfig(metaclass=_Removed):
    def __init__(self) -> None:
        self.profiles, self.pools, self.cache = [], {}, None

    def set_memory_pool_limit(self, pool: MemoryPoolType, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> ITimingCache:
        return ITimingCache(data)

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self.cache = cache
        return True


class Builder:
    def __init__(self, logger: Logger) -> None:
        calls.append(("Builder",))

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        calls.append(("create_network", flags))
        if flags:
            raise ValueError("TensorRT 11 networks take no creation flags")
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(
        self, network: INetworkDefinition, config: IBuilderConfig
    ) -> bytes:
        calls.append(("build_serialized_network",))
        ((lo, opt, hi),) = config.profiles[0].shapes.values()
        plan = {**network.onnx, "profile": [lo, opt, hi], "in_dtype": "FLOAT", "out_dtype": "FLOAT"}
        return json.dumps(plan).encode()


class Runtime:
    def __init__(self, logger: Logger) -> None:
        self.logger = logger

    def deserialize_cuda_engine(self, plan: bytes):
        calls.append(("deserialize_cuda_engine",))
        try:
            return ICudaEngine(json.loads(plan))
        except ValueError:
            return None


class ICudaEngine(metaclass=_Removed):
    def __init__(self, plan: dict) -> None:
        import onnxruntime as ort

        self.plan = plan
        self.session = ort.InferenceSession(plan["path"], providers=["CPUExecutionProvider"])
        self.num_io_tensors = 2
        self.names = [plan["input"], plan["output"]]

    def get_tensor_name(self, i: int) -> str:
        return self.names[i]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode.INPUT if name == self.plan["input"] else TensorIOMode.OUTPUT

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType[self.plan["in_dtype" if name == self.plan["input"] else "out_dtype"]]

    def get_tensor_shape(self, name: str) -> tuple:
        lo, _, hi = self.plan["profile"]
        batch = lo[0] if lo[0] == hi[0] else -1
        if name == self.plan["input"]:
            return (batch, *self.plan.get("in_shape", lo[1:]))
        return (-1, *self._out_shape(1)[1:])

    def _out_shape(self, batch: int) -> tuple:
        out = self.session.get_outputs()[0].shape
        h, w = self.plan["hw"]
        return (batch, out[1], h, w) if len(out) == 4 else (batch, h, w)

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        return tuple(tuple(s) for s in self.plan["profile"])

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext(metaclass=_Removed):
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine, self.input_shape, self.addresses = engine, None, {}

    def set_input_shape(self, name: str, shape) -> bool:
        calls.append(("set_input_shape", name, tuple(shape)))
        lo, _, hi = self.engine.plan["profile"]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.input_shape = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        if name == self.engine.plan["input"]:
            return self.input_shape or self.engine.get_tensor_shape(name)
        if self.input_shape is None:
            return self.engine.get_tensor_shape(name)  # -1 batch: not yet known
        return self.engine._out_shape(self.input_shape[0])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if not isinstance(ptr, int):
            raise TypeError("set_tensor_address(): incompatible function arguments")
        self.addresses[name] = ptr
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int) or isinstance(stream_handle, bool):
            raise TypeError(
                "execute_async_v3(): incompatible function arguments (stream_handle: int)"
            )
        calls.append(("execute_async_v3", stream_handle))
        if self.input_shape is None or len(self.addresses) < 2:
            return False
        stream = next((s for s in gpu.live["stream"] if int(s) == stream_handle), None)
        return gpu._enqueue(stream, self._run) == 0

    def _run(self) -> None:
        plan, shape = self.engine.plan, self.input_shape
        x = gpu.device_array(
            self.addresses[plan["input"]], shape, nptype(DataType[plan["in_dtype"]])
        )
        y = self.engine.session.run(None, {plan["input"]: np.ascontiguousarray(x, np.float32)})[0]
        out = gpu.device_array(self.addresses[plan["output"]], y.shape, y.dtype)
        out[...] = y


def install(fake_gpu) -> ModuleType:
    """This module, wired to ``fake_gpu``, with its call log cleared."""
    import sys

    global gpu
    gpu = fake_gpu
    calls.clear()
    removed_asked.clear()
    return sys.modules[__name__]
