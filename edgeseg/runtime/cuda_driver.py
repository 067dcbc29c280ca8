"""The CUDA host side in one small module: device memory, streams, events, graphs, kernel build
and launch, for one GPU per :class:`Driver`.

Implemented with cuda-python (``cuda.bindings``, 12.6.1 or newer: driver API + NVRTC; binary
wheels for x86-64 and aarch64, what TensorRT's own Python samples use). Where a stack already has
pycuda instead, the same interface runs on pycuda (kernels then built by its nvcc; no graphs).
Nothing here imports CUDA at module import time, so CPU-only installs never pay for it.

Contexts: every driver works in its device's *primary* context, the one PyTorch and the CUDA
runtime use, so pointers and streams from torch are valid here and ours in torch. A context is
current per thread: every call makes it current on the calling thread first (cheap after the
first time on a thread), so a pipeline may be driven from any thread.

Kernels are the shipped ``cpp_ext/cuda/kernels.cu`` over ``cpp_ext/include/pixel_ops.h``,
compiled at first use for the device's own architecture with ``--fmad=false`` (identical maths to
the CPU extension) and cached on disk under ``$EDGESEG_CACHE`` (default ``~/.cache/edgeseg``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg._io import atomic_path
from edgeseg._lazy import require
from edgeseg.errors import EdgesegError

KERNEL_FILE = "kernels.cu"
HEADER_FILE = "pixel_ops.h"
NVRTC_OPTIONS = ("--fmad=false", "-std=c++17")

# Kernel parameter kinds: P pointer, i int32, q int64, H uint16, f float32, f3 float3.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "preprocess_f32": ("P", "i", "i", "q", "P", "i", "i", "f3", "f3"),
    "preprocess_f16": ("P", "i", "i", "q", "P", "i", "i", "f3", "f3"),
    "argmax_f32": ("P", "i", "i", "i", "P"),
    "argmax_f16": ("P", "i", "i", "i", "P"),
    "labels_from_i64": ("P", "q", "P"),
    "labels_from_i32": ("P", "q", "P"),
    "bilinear_argmax_f32": ("P", "i", "i", "i", "P", "i", "i"),
    "bilinear_argmax_f16": ("P", "i", "i", "i", "P", "i", "i"),
    "argmax_conf_f32": ("P", "i", "i", "i", "P", "P"),
    "argmax_conf_f16": ("P", "i", "i", "i", "P", "P"),
    "bilinear_argmax_conf_f32": ("P", "i", "i", "i", "P", "P", "i", "i"),
    "bilinear_argmax_conf_f16": ("P", "i", "i", "i", "P", "P", "i", "i"),
    "upsample_blend": ("P", "i", "i", "P", "i", "i", "P", "q", "P", "P", "H"),
    "ema_reset_count": ("P",),
    "ema_votes_f32": ("P", "P", "i", "q", "P"),
    "ema_votes_f16": ("P", "P", "i", "q", "P"),
    "ema_apply_f32": ("P", "P", "i", "q", "f", "f", "P", "q"),
    "ema_apply_f16": ("P", "P", "i", "q", "f", "f", "P", "q"),
}
_NP_KIND = {"P": np.uint64, "i": np.int32, "q": np.int64, "H": np.uint16, "f": np.float32}


class CudaError(RuntimeError):
    """A CUDA driver call failed; the message names the call and the error."""


def kernel_sources() -> dict[str, str]:
    """The .cu and .h texts: from the source checkout, or the copy shipped inside the package."""
    here = Path(__file__).resolve().parent
    for inc, cu in (
        (here.parents[1] / "cpp_ext" / "include", here.parents[1] / "cpp_ext" / "cuda"),
        (here / "_kernel_src" / "include", here / "_kernel_src" / "cuda"),
    ):
        if (inc / HEADER_FILE).is_file() and (cu / KERNEL_FILE).is_file():
            return {
                HEADER_FILE: (inc / HEADER_FILE).read_text(),
                KERNEL_FILE: (cu / KERNEL_FILE).read_text(),
            }
    raise EdgesegError(
        "the CUDA kernel sources (kernels.cu, pixel_ops.h) are missing from this install; "
        "reinstall edgeseg (pip install -e . from a checkout)"
    )


def cache_dir() -> Path:
    return Path(os.environ.get("EDGESEG_CACHE", Path.home() / ".cache" / "edgeseg")) / "cuda"


def pack_args(
    signature: tuple[str, ...], args: tuple[Any, ...]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Kernel arguments as the driver API wants them: an array of pointers to each value.

    Returns the value holders too: they must stay alive until the launch has been issued.
    """
    if len(signature) != len(args):
        raise TypeError(f"kernel takes {len(signature)} arguments, got {len(args)}")
    holders = []
    for kind, a in zip(signature, args):
        if kind == "f3":
            holders.append(np.asarray(a, np.float32).reshape(3).copy())
        elif kind == "P":
            holders.append(np.array([0 if a is None else int(a)], np.uint64))
        else:
            holders.append(np.array([a], _NP_KIND[kind]))
    return holders, np.array([h.ctypes.data for h in holders], np.uint64)


def check(result: Any, call: str = "CUDA call") -> Any:
    """cuda-python calls return ``(err, *values)``; raise :class:`CudaError` on an error, return
    the values (one value as itself, none as None)."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", None) or f"error {int(err)}"
        raise CudaError(f"{call} failed: {name}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


@dataclass
class DeviceBuffer:
    """Device memory owned by a :class:`Driver`; freed with :meth:`free` or on collection."""

    ptr: int
    nbytes: int
    driver: Driver

    def free(self) -> None:
        if self.ptr:
            self.driver.mem_free(self.ptr)
            self.ptr = 0

    def __del__(self) -> None:
        try:
            self.free()
        except Exception:  # interpreter shutdown: the context may already be gone
            pass


class Driver:
    """One GPU through cuda-python: context, memory, streams, events, graphs, NVRTC, launches.

    ``cu``/``nvrtc``: the binding modules (``cuda.bindings.driver``/``.nvrtc``); tests pass fakes
    shaped like them.
    """

    name = "cuda-python"
    graphs = True  # stream capture into CUDA graphs

    def __init__(self, device: int = 0, cu: Any = None, nvrtc: Any = None) -> None:
        self.cu = cu or require("cuda.bindings.driver")
        self.nvrtc = nvrtc or require("cuda.bindings.nvrtc")
        self.index = device
        try:
            try:
                check(self.cu.cuInit(0), "cuInit")
            except CudaError:
                raise
            except (RuntimeError, OSError) as e:  # cuda-bindings 13: no libcuda.so to load
                raise CudaError(f"the CUDA driver could not be loaded ({e})") from None
            count = check(self.cu.cuDeviceGetCount(), "cuDeviceGetCount")
            if not 0 <= device < count:
                raise CudaError(f"this machine has {count} CUDA GPU(s), numbered from 0")
            self.device = check(self.cu.cuDeviceGet(device), "cuDeviceGet")
            # The primary context is the one PyTorch and the CUDA runtime use.
            self.context = check(
                self.cu.cuDevicePrimaryCtxRetain(self.device), "cuDevicePrimaryCtxRetain"
            )
        except CudaError as e:
            raise EdgesegError(
                f"no usable CUDA device {device} ({e}); check nvidia-smi and the driver"
            ) from None
        self.make_current()
        attr = self.cu.CUdevice_attribute
        major = check(
            self.cu.cuDeviceGetAttribute(
                attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device
            )
        )
        minor = check(
            self.cu.cuDeviceGetAttribute(
                attr.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device
            )
        )
        self.arch = f"sm_{major}{minor}"
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def make_current(self) -> None:
        """Bind this GPU's context to the calling thread, unless it is the one this thread last
        bound (one record per thread for every driver: a thread that used GPU 1 and comes back
        to GPU 0 binds GPU 0's context again)."""
        if getattr(_CURRENT, "context", None) is not self.context:
            check(self.cu.cuCtxSetCurrent(self.context), "cuCtxSetCurrent")
            _CURRENT.context = self.context

    def ensure_current(self) -> None:
        """:meth:`make_current` after asking the driver which context is current: other code on
        this thread (PyTorch on another GPU, the CUDA runtime) may have changed it since."""
        current = check(self.cu.cuCtxGetCurrent(), "cuCtxGetCurrent")
        _CURRENT.context = self.context if _same(current, self.context) else None
        self.make_current()

    def gpu_name(self) -> str:
        raw = check(self.cu.cuDeviceGetName(256, self.device), "cuDeviceGetName")
        return bytes(raw).split(b"\0", 1)[0].decode().strip()

    # -- memory
    def mem_alloc(self, nbytes: int) -> DeviceBuffer:
        self.make_current()
        return DeviceBuffer(
            int(check(self.cu.cuMemAlloc(max(1, nbytes)), "cuMemAlloc")), nbytes, self
        )

    def mem_free(self, ptr: int) -> None:
        self.make_current()
        check(self.cu.cuMemFree(ptr), "cuMemFree")

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """Page-locked host array (fast, truly asynchronous copies); freed with the array."""
        self.make_current()
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(1, count * dtype.itemsize)
        ptr = int(check(self.cu.cuMemHostAlloc(nbytes, 0), "cuMemHostAlloc"))
        buf = (ctypes.c_byte * nbytes).from_address(ptr)
        arr = np.frombuffer(buf, dtype=dtype, count=count).reshape(shape)
        weakref.finalize(buf, self.cu.cuMemFreeHost, ptr)  # page-locked block goes with the array
        return arr

    def memcpy_htod(self, dst: int, src: np.ndarray, stream: Any = 0) -> None:
        self.make_current()
        check(
            self.cu.cuMemcpyHtoDAsync(dst, src.ctypes.data, src.nbytes, stream), "cuMemcpyHtoDAsync"
        )

    def memcpy_dtoh(self, dst: np.ndarray, src: int, stream: Any = 0) -> None:
        self.make_current()
        check(
            self.cu.cuMemcpyDtoHAsync(dst.ctypes.data, src, dst.nbytes, stream), "cuMemcpyDtoHAsync"
        )

    # -- streams and events
    def stream_create(self) -> Any:
        self.make_current()
        return check(self.cu.cuStreamCreate(1), "cuStreamCreate")  # CU_STREAM_NON_BLOCKING

    def stream_handle(self, stream: Any) -> int:
        """The ``cudaStream_t`` value as an integer (what TensorRT and ONNX Runtime take)."""
        return int(stream)

    def stream_synchronize(self, stream: Any) -> None:
        self.make_current()
        check(self.cu.cuStreamSynchronize(stream), "cuStreamSynchronize")

    def stream_destroy(self, stream: Any) -> None:
        self.make_current()
        check(self.cu.cuStreamDestroy(stream), "cuStreamDestroy")

    def event_create(self) -> Any:
        self.make_current()
        return check(self.cu.cuEventCreate(0), "cuEventCreate")

    def event_record(self, event: Any, stream: Any) -> None:
        self.make_current()
        check(self.cu.cuEventRecord(event, stream), "cuEventRecord")

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self.make_current()
        check(self.cu.cuEventSynchronize(end), "cuEventSynchronize")
        return float(check(self.cu.cuEventElapsedTime(start, end), "cuEventElapsedTime"))

    def event_destroy(self, event: Any) -> None:
        self.make_current()
        check(self.cu.cuEventDestroy(event), "cuEventDestroy")

    # -- graphs
    def graph_capture(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        """Capture what ``enqueue`` puts on ``stream`` as an executable graph.

        Thread-local capture mode: other threads' CUDA calls neither join nor break it. If
        ``enqueue`` raises, the capture is ended and discarded before the error propagates.
        """
        self.make_current()
        mode = self.cu.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_THREAD_LOCAL
        check(self.cu.cuStreamBeginCapture(stream, mode), "cuStreamBeginCapture")
        try:
            enqueue()
        except BaseException:
            graph = self.cu.cuStreamEndCapture(stream)[1]  # ends the capture whatever it holds
            if graph:
                self.cu.cuGraphDestroy(graph)
            raise
        graph = check(self.cu.cuStreamEndCapture(stream), "cuStreamEndCapture")
        try:
            return check(self.cu.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        finally:
            check(self.cu.cuGraphDestroy(graph), "cuGraphDestroy")  # the executable keeps a copy

    def graph_launch(self, graph_exec: Any, stream: Any) -> None:
        self.make_current()
        check(self.cu.cuGraphLaunch(graph_exec, stream), "cuGraphLaunch")

    def graph_destroy(self, graph_exec: Any) -> None:
        self.make_current()
        check(self.cu.cuGraphExecDestroy(graph_exec), "cuGraphExecDestroy")

    # -- kernels
    def compile(self, sources: dict[str, str]) -> bytes:
        """NVRTC: kernels.cu (+ pixel_ops.h in memory) -> CUBIN for this GPU (or PTX for the
        driver to finish, see :func:`nvrtc_target`), cached on disk."""
        nv = self.nvrtc
        version = check(nv.nvrtcVersion(), "nvrtcVersion")
        supported = list(check(nv.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs"))
        target, cubin = nvrtc_target(self.arch, supported, version)
        options = (*NVRTC_OPTIONS, f"--gpu-architecture={target}")
        key = hashlib.sha256(repr((sources, options, version)).encode()).hexdigest()[:24]
        path = cache_dir() / f"kernels-{target}-{key}.{'cubin' if cubin else 'ptx'}"
        if path.is_file():
            return path.read_bytes()
        image = nvrtc_compile(nv, sources, options, want_cubin=cubin)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(image)
        return image

    def function(self, name: str) -> Any:
        self.make_current()
        with self._lock:
            if name not in self._functions:
                if "kernels" not in self._modules:
                    image = self.compile(kernel_sources())
                    self._modules["kernels"] = check(
                        self.cu.cuModuleLoadData(image), "cuModuleLoadData"
                    )
                fn = self.cu.cuModuleGetFunction(self._modules["kernels"], name.encode())
                self._functions[name] = check(fn, "cuModuleGetFunction")
            return self._functions[name]

    def load_kernels(self) -> None:
        """Build and load every kernel now (before a graph capture, which cannot load modules)."""
        for name in SIGNATURES:
            self.function(name)

    def launch(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple,
        stream: Any = 0,
    ) -> None:
        fn = self.function(name)
        holders, ptrs = pack_args(SIGNATURES[name], args)
        result = self.cu.cuLaunchKernel(fn, *grid, *block, 0, stream, ptrs.ctypes.data, 0)
        check(result, f"cuLaunchKernel({name})")
        del holders  # the driver has copied the values by the time cuLaunchKernel returns


def nvrtc_target(arch: str, supported: list[int], version: Any = None) -> tuple[str, bool]:
    """(``--gpu-architecture`` value, whether it is a CUBIN) for a device ``arch`` (``sm_87``).

    NVRTC builds machine code only for the architectures it lists (NVRTC 13: sm_75 and newer,
    without sm_101), and a CUBIN runs on its own major version at the same or a higher minor.
    So: the highest listed architecture not above the device's; a CUBIN when it shares the
    device's major version, else PTX of it, which the driver compiles for the device (a GPU
    newer than this NVRTC). A device older than everything listed (sm_72, Jetson Xavier, under
    NVRTC 13) gets no CUDA kernels: an :class:`EdgesegError` the caller falls back on.
    """
    dev = int(arch.removeprefix("sm_"))
    below = [a for a in supported if a <= dev]
    if not below:
        lowest = f"sm_{min(supported)}" if supported else "no architecture"
        raise EdgesegError(
            f"this GPU is {arch}, and NVRTC {'.'.join(map(str, version or ()))} builds for "
            f"{lowest} and newer: the CUDA kernels cannot be built for it (the NVRTC of "
            "CUDA 12, cuda-python<13, still builds for sm_72)"
        )
    best = max(below)
    if best // 10 == dev // 10:
        return f"sm_{best}", True
    return f"compute_{best}", False


def nvrtc_compile(
    nv: Any, sources: dict[str, str], options: tuple[str, ...], want_cubin: bool
) -> bytes:
    """Compile ``kernels.cu`` with NVRTC; a compile error raises with NVRTC's log."""
    prog = check(
        nv.nvrtcCreateProgram(
            sources[KERNEL_FILE].encode(),
            KERNEL_FILE.encode(),
            1,
            [sources[HEADER_FILE].encode()],
            [HEADER_FILE.encode()],
        )
    )
    try:
        opts = [o.encode() for o in options]
        err = nv.nvrtcCompileProgram(prog, len(opts), opts)[0]
        if int(err) != 0:
            size = check(nv.nvrtcGetProgramLogSize(prog))
            log = b" " * size
            nv.nvrtcGetProgramLog(prog, log)
            raise CudaError(
                f"NVRTC failed to compile {KERNEL_FILE}:\n{log.decode(errors='replace')}"
            )
        get_size, get = (
            (nv.nvrtcGetCUBINSize, nv.nvrtcGetCUBIN)
            if want_cubin
            else (nv.nvrtcGetPTXSize, nv.nvrtcGetPTX)
        )
        out = b" " * check(get_size(prog))
        check(get(prog, out))
        return out
    finally:
        nv.nvrtcDestroyProgram(prog)


class PyCudaDriver(Driver):
    """The same interface on pycuda, for stacks that already use it (kernels built by nvcc).

    pycuda keeps a context stack per thread: the device's primary context is pushed once on
    every thread that uses the driver. Streams are pycuda ``Stream`` objects; TensorRT and ONNX
    Runtime get their integer handle from :meth:`stream_handle`. No CUDA graphs.
    """

    name = "pycuda"
    graphs = False

    def __init__(self, device: int = 0, drv: Any = None) -> None:  # noqa: D107 - see Driver
        self.drv = drv or require("pycuda.driver")
        self.drv.init()
        if not 0 <= device < self.drv.Device.count():
            raise EdgesegError(
                f"no usable CUDA device {device}: this machine has "
                f"{self.drv.Device.count()} CUDA GPU(s), numbered from 0"
            )
        self.index = device
        self.dev = self.drv.Device(device)
        self.ctx = self.dev.retain_primary_context()
        self._local = threading.local()  # pycuda: a context stack per thread, pushed once
        self.make_current()
        major, minor = self.dev.compute_capability()
        self.arch = f"sm_{major}{minor}"
        self._module = None
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def make_current(self) -> None:
        if not getattr(self._local, "current", False):
            self.ctx.push()
            self._local.current = True

    def ensure_current(self) -> None:
        self.make_current()

    def gpu_name(self) -> str:
        return str(self.dev.name())

    def mem_alloc(self, nbytes: int) -> DeviceBuffer:
        self.make_current()
        alloc = self.drv.mem_alloc(max(1, nbytes))
        buf = DeviceBuffer(int(alloc), nbytes, self)
        buf._alloc = alloc  # pycuda frees it with the object
        return buf

    def mem_free(self, ptr: int) -> None:
        pass  # the DeviceAllocation owned by the buffer frees itself

    def pinned_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        self.make_current()
        return self.drv.pagelocked_empty(shape, dtype)

    def memcpy_htod(self, dst: int, src: np.ndarray, stream: Any = None) -> None:
        self.make_current()
        self.drv.memcpy_htod_async(dst, src, stream or None)

    def memcpy_dtoh(self, dst: np.ndarray, src: int, stream: Any = None) -> None:
        self.make_current()
        self.drv.memcpy_dtoh_async(dst, src, stream or None)

    def stream_create(self) -> Any:
        self.make_current()
        return self.drv.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle) if stream is not None and hasattr(stream, "handle") else 0

    def stream_synchronize(self, stream: Any) -> None:
        self.make_current()
        stream.synchronize()

    def stream_destroy(self, stream: Any) -> None:
        pass  # pycuda destroys a Stream with the object

    def event_create(self) -> Any:
        self.make_current()
        return self.drv.Event()

    def event_record(self, event: Any, stream: Any) -> None:
        self.make_current()
        event.record(stream)

    def event_elapsed_ms(self, start: Any, end: Any) -> float:
        self.make_current()
        end.synchronize()
        return float(start.time_till(end))

    def event_destroy(self, event: Any) -> None:
        pass  # with the object

    def graph_capture(self, stream: Any, enqueue: Callable[[], None]) -> Any:
        raise EdgesegError("CUDA graphs need cuda-python (pip install 'cuda-python>=12.6.1')")

    def function(self, name: str) -> Any:
        from pycuda.compiler import compile as nvcc_compile

        self.make_current()
        with self._lock:
            if self._module is None:
                src = kernel_sources()
                inc = cache_dir() / "include"
                inc.mkdir(parents=True, exist_ok=True)
                (inc / HEADER_FILE).write_text(src[HEADER_FILE])
                cubin = nvcc_compile(
                    src[KERNEL_FILE],
                    options=list(NVRTC_OPTIONS),
                    arch=self.arch,
                    include_dirs=[str(inc)],
                    no_extern_c=True,
                )
                self._module = self.drv.module_from_buffer(cubin)
            if name not in self._functions:
                self._functions[name] = self._module.get_function(name)
            return self._functions[name]

    def launch(self, name: str, grid, block, args, stream: Any = None) -> None:
        fn = self.function(name)
        holders, _ = pack_args(SIGNATURES[name], args)
        values = [h if h.size > 1 else h[0] for h in holders]  # numpy scalars carry their C type
        fn(*values, grid=tuple(grid), block=tuple(block), stream=stream or None)


# The context each thread last bound through a Driver (cuCtxSetCurrent is per thread).
_CURRENT = threading.local()


def _same(a: Any, b: Any) -> bool:
    """Whether two context handles name the same context (cuda-python hands out new objects)."""
    try:
        return a is b or int(a) == int(b)
    except (TypeError, ValueError):
        return False


_DRIVERS: dict[int, Driver] = {}
_DRIVERS_LOCK = threading.Lock()


def get_driver(device: int = 0) -> Driver:
    """The driver of GPU ``device`` (one per GPU per process): cuda-python if importable, else
    pycuda; a clear error otherwise."""
    with _DRIVERS_LOCK:
        if device not in _DRIVERS:
            try:
                _DRIVERS[device] = Driver(device)
            except EdgesegError as first:
                try:
                    _DRIVERS[device] = PyCudaDriver(device)
                except EdgesegError:
                    raise first from None
        return _DRIVERS[device]
