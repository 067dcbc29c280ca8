"""The CUDA host side in one small module: device memory, streams, events, kernel build, launch.

Implemented with cuda-python (``cuda.bindings``: driver API + NVRTC; binary wheels for x86-64 and
aarch64, what TensorRT's own Python samples use). Where a stack already has pycuda instead, the
same :class:`Driver` interface runs on pycuda (kernels then built by its nvcc). Nothing here
imports CUDA at module import time, so CPU-only installs never pay for it.

Kernels are the shipped ``cpp_ext/cuda/kernels.cu`` over ``cpp_ext/include/pixel_ops.h``,
compiled at first use for the device's own architecture with ``--fmad=false`` (identical maths to
the CPU extension) and cached on disk under ``$EDGESEG_CACHE`` (default ``~/.cache/edgeseg``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg._io import atomic_path
from edgeseg.errors import EdgesegError

KERNEL_FILE = "kernels.cu"
HEADER_FILE = "pixel_ops.h"
NVRTC_OPTIONS = ("--fmad=false", "-std=c++17")

# Kernel parameter kinds: P pointer, i int32, q int64, H uint16, f3 float3.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "preprocess_f32": ("P", "i", "i", "q", "P", "i", "i", "f3", "f3"),
    "preprocess_f16": ("P", "i", "i", "q", "P", "i", "i", "f3", "f3"),
    "argmax_f32": ("P", "i", "i", "i", "P"),
    "argmax_f16": ("P", "i", "i", "i", "P"),
    "labels_from_i64": ("P", "q", "P"),
    "labels_from_i32": ("P", "q", "P"),
    "bilinear_argmax_f32": ("P", "i", "i", "i", "P", "i", "i"),
    "bilinear_argmax_f16": ("P", "i", "i", "i", "P", "i", "i"),
    "upsample_blend": ("P", "i", "i", "P", "i", "i", "P", "q", "P", "P", "H"),
}
_NP_KIND = {"P": np.uint64, "i": np.int32, "q": np.int64, "H": np.uint16}


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


def _check(result):
    """cuda-python calls return ``(err, *values)``; raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA error {err!r}")
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
    """CUDA through cuda-python: context, memory, streams, events, NVRTC builds and launches."""

    name = "cuda-python"

    def __init__(self, device: int = 0) -> None:
        try:
            from cuda.bindings import driver as cu
            from cuda.bindings import nvrtc
        except ImportError:
            raise EdgesegError(
                "CUDA kernels need cuda-python: pip install 'cuda-python>=12' "
                "(or pycuda, where a stack already uses it)"
            ) from None
        self.cu, self.nvrtc = cu, nvrtc
        try:
            _check(cu.cuInit(0))
            self.device = _check(cu.cuDeviceGet(device))
            # The primary context is the one PyTorch and the CUDA runtime use: pointers and
            # streams from torch are valid here, and ours in torch.
            self.context = _check(cu.cuDevicePrimaryCtxRetain(self.device))
            _check(cu.cuCtxSetCurrent(self.context))
        except Exception as e:
            raise EdgesegError(
                f"no usable CUDA device {device} ({e}); check nvidia-smi and the driver"
            ) from None
        major = _check(
            cu.cuDeviceGetAttribute(
                cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, self.device
            )
        )
        minor = _check(
            cu.cuDeviceGetAttribute(
                cu.CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, self.device
            )
        )
        self.arch = f"sm_{major}{minor}"
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._local.current = True

    def make_current(self) -> None:
        """Bind the context to the calling thread (driver-API calls need one; each thread once)."""
        if not getattr(self._local, "current", False):
            _check(self.cu.cuCtxSetCurrent(self.context))
            self._local.current = True

    # -- memory
    def mem_alloc(self, nbytes: int) -> DeviceBuffer:
        self.make_current()
        return DeviceBuffer(int(_check(self.cu.cuMemAlloc(max(1, nbytes)))), nbytes, self)

    def mem_free(self, ptr: int) -> None:
        _check(self.cu.cuMemFree(ptr))

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        """Page-locked host array (fast, truly asynchronous copies); freed with the array."""
        import ctypes

        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        ptr = int(_check(self.cu.cuMemHostAlloc(max(1, nbytes), 0)))
        buf = (ctypes.c_byte * max(1, nbytes)).from_address(ptr)
        arr = np.frombuffer(buf, dtype=dtype, count=int(np.prod(shape))).reshape(shape)
        # Free the page-locked block when the array's buffer goes away.
        import weakref

        weakref.finalize(buf, self.cu.cuMemFreeHost, ptr)
        return arr

    def memcpy_htod(self, dst: int, src: np.ndarray, stream: int = 0) -> None:
        _check(self.cu.cuMemcpyHtoDAsync(dst, src.ctypes.data, src.nbytes, stream))

    def memcpy_dtoh(self, dst: np.ndarray, src: int, stream: int = 0) -> None:
        _check(self.cu.cuMemcpyDtoHAsync(dst.ctypes.data, src, dst.nbytes, stream))

    # -- streams and events
    def stream_create(self) -> int:
        return int(_check(self.cu.cuStreamCreate(1)))  # CU_STREAM_NON_BLOCKING

    def stream_synchronize(self, stream: int) -> None:
        _check(self.cu.cuStreamSynchronize(stream))

    def event_create(self) -> Any:
        return _check(self.cu.cuEventCreate(0))

    def event_record(self, event, stream: int) -> None:
        _check(self.cu.cuEventRecord(event, stream))

    def event_elapsed_ms(self, start, end) -> float:
        _check(self.cu.cuEventSynchronize(end))
        return float(_check(self.cu.cuEventElapsedTime(start, end)))

    # -- kernels
    def compile(self, sources: dict[str, str]) -> bytes:
        """NVRTC: kernels.cu (+ pixel_ops.h as in-memory header) -> CUBIN for this GPU, cached."""
        nv = self.nvrtc
        version = _check(nv.nvrtcVersion())
        options = (*NVRTC_OPTIONS, f"--gpu-architecture={self.arch}")
        key = hashlib.sha256(repr((sources, options, version)).encode()).hexdigest()[:24]
        path = cache_dir() / f"kernels-{self.arch}-{key}.cubin"
        if path.is_file():
            return path.read_bytes()
        cubin = nvrtc_compile(nv, sources, options, want_cubin=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(cubin)
        return cubin

    def function(self, name: str):
        with self._lock:
            if name not in self._functions:
                if "kernels" not in self._modules:
                    image = self.compile(kernel_sources())
                    self._modules["kernels"] = _check(self.cu.cuModuleLoadData(image))
                self._functions[name] = _check(
                    self.cu.cuModuleGetFunction(self._modules["kernels"], name.encode())
                )
            return self._functions[name]

    def launch(
        self,
        name: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        args: tuple,
        stream: int = 0,
    ) -> None:
        self.make_current()
        holders, ptrs = pack_args(SIGNATURES[name], args)
        _check(
            self.cu.cuLaunchKernel(
                self.function(name), *grid, *block, 0, stream, ptrs.ctypes.data, 0
            )
        )
        del holders  # the driver has copied the values by the time cuLaunchKernel returns


def nvrtc_compile(nv, sources: dict[str, str], options: tuple[str, ...], want_cubin: bool) -> bytes:
    """Compile ``kernels.cu`` with NVRTC; a compile error raises with NVRTC's log."""
    prog = _check(
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
            size = _check(nv.nvrtcGetProgramLogSize(prog))
            log = b" " * size
            nv.nvrtcGetProgramLog(prog, log)
            raise RuntimeError(
                f"NVRTC failed to compile {KERNEL_FILE}:\n{log.decode(errors='replace')}"
            )
        if want_cubin:
            size = _check(nv.nvrtcGetCUBINSize(prog))
            out = b" " * size
            _check(nv.nvrtcGetCUBIN(prog, out))
        else:
            size = _check(nv.nvrtcGetPTXSize(prog))
            out = b" " * size
            _check(nv.nvrtcGetPTX(prog, out))
        return out
    finally:
        nv.nvrtcDestroyProgram(prog)


class PyCudaDriver(Driver):
    """The same interface on pycuda, for stacks that already use it (kernels built by nvcc)."""

    name = "pycuda"

    def __init__(self, device: int = 0) -> None:  # noqa: D107 - see Driver
        try:
            import pycuda.driver as drv
        except ImportError:
            raise EdgesegError("pycuda is not installed") from None
        drv.init()
        self.drv = drv
        self.dev = drv.Device(device)
        self.ctx = self.dev.retain_primary_context()
        self.ctx.push()
        major, minor = self.dev.compute_capability()
        self.arch = f"sm_{major}{minor}"
        self._module = None
        self._functions: dict[str, Any] = {}
        self._lock = threading.Lock()

    def make_current(self) -> None:
        pass  # pushed at construction, on the constructing thread

    def mem_alloc(self, nbytes: int) -> DeviceBuffer:
        alloc = self.drv.mem_alloc(max(1, nbytes))
        buf = DeviceBuffer(int(alloc), nbytes, self)
        buf._alloc = alloc  # pycuda frees it with the object
        return buf

    def mem_free(self, ptr: int) -> None:
        pass  # the DeviceAllocation owned by the buffer frees itself

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def memcpy_htod(self, dst: int, src: np.ndarray, stream=None) -> None:
        self.drv.memcpy_htod_async(dst, src, stream or None)

    def memcpy_dtoh(self, dst: np.ndarray, src: int, stream=None) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream or None)

    def stream_create(self):
        return self.drv.Stream()

    def stream_synchronize(self, stream) -> None:
        stream.synchronize()

    def event_create(self):
        return self.drv.Event()

    def event_record(self, event, stream) -> None:
        event.record(stream)

    def event_elapsed_ms(self, start, end) -> float:
        end.synchronize()
        return float(start.time_till(end))

    def function(self, name: str):
        from pycuda.compiler import compile as nvcc_compile

        with self._lock:
            if self._module is None:
                src = kernel_sources()
                inc = cache_dir() / "include"
                inc.mkdir(parents=True, exist_ok=True)
                (inc / HEADER_FILE).write_text(src[HEADER_FILE])
                cubin = nvcc_compile(
                    src[KERNEL_FILE],
                    options=["--fmad=false", "-std=c++17"],
                    arch=self.arch,
                    include_dirs=[str(inc)],
                    no_extern_c=True,
                )
                self._module = self.drv.module_from_buffer(cubin)
            if name not in self._functions:
                self._functions[name] = self._module.get_function(name)
            return self._functions[name]

    def launch(self, name: str, grid, block, args, stream=0) -> None:
        holders, _ = pack_args(SIGNATURES[name], args)
        values = [h if h.size > 1 else h[0] for h in holders]  # numpy scalars carry their C type
        self.function(name)(*values, grid=tuple(grid), block=tuple(block), stream=stream or None)


_DRIVER: Driver | None = None
_DRIVER_LOCK = threading.Lock()


def get_driver(device: int = 0) -> Driver:
    """The process-wide driver: cuda-python if importable, else pycuda; a clear error otherwise."""
    global _DRIVER
    with _DRIVER_LOCK:
        if _DRIVER is None:
            try:
                _DRIVER = Driver(device)
            except EdgesegError as first:
                try:
                    _DRIVER = PyCudaDriver(device)
                except EdgesegError:
                    raise first from None
        return _DRIVER
