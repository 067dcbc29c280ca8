"""A fake GPU shaped like cuda-python's ``cuda.bindings.driver`` and ``.nvrtc`` modules.

Same function names and arity, same ``(CUresult, value...)`` returns, handles that are objects
(``int(handle)`` gives the value, as with cuda-python's CUstream). Device memory is host memory
here, bounds-checked on every copy and kernel; a context is current per thread, and every call
that needs one fails with CUDA_ERROR_INVALID_CONTEXT on a thread that has none. Streams run
their work at once, except while capturing, when it is recorded into a graph that launches
replay. Kernels run as the CPU extension (``edgeseg._cpu``), which computes what the CUDA
kernels compute (tests/runtime/test_kernels_cuda.py proves them equal on a GPU).

For testing the logic around the GPU (pipelines, backends, fault handling); never a
substitute for the GPU tests.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import threading
import time
from types import SimpleNamespace

import numpy as np

from edgeseg.runtime.cuda import SIGNATURES


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_INVALID_DEVICE = 101
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_ILLEGAL_ADDRESS = 700
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901


OK = CUresult.CUDA_SUCCESS


class Handle:
    """An opaque driver handle (CUstream, CUevent...): ``int()`` gives its value."""

    _ids = itertools.count(0x1000)

    def __init__(self, kind: str) -> None:
        self.kind, self.value = kind, next(self._ids)

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{self.kind} {self.value:#x}>"


class FakeGpu:
    """The state behind the fake modules: memory, contexts, streams, graphs, a call log."""

    def __init__(self, devices: int = 1, name: str = "Fake GPU") -> None:
        self.devices, self.name = devices, name
        self.calls: list[tuple] = []
        self.memory: dict[int, bytearray] = {}  # device pointer -> its bytes
        self.host: dict[int, ctypes.Array] = {}  # page-locked blocks
        self.live = {"stream": set(), "event": set(), "graph": set(), "exec": set()}
        self.capturing: dict[Handle, list] = {}
        self.fail: dict[str, CUresult] = {}  # function name -> the error it returns next
        self._local = threading.local()
        self._next_ptr = 0x7F0000000000
        self.contexts = {d: Handle("CUcontext") for d in range(devices)}
        self.events: dict[Handle, float] = {}
        self.cc = (8, 7)  # compute capability (Jetson Orin)
        self.nvrtc_archs = [75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121]  # NVRTC 13.0
        self.cu = self._driver_module()
        self.nvrtc = self._nvrtc_module()

    # -- helpers
    def _context_ok(self) -> bool:
        return getattr(self._local, "ctx", None) is not None

    def _call(self, name: str, needs_context: bool = True) -> CUresult:
        self.calls.append((name, threading.get_ident()))
        if name in self.fail:
            return self.fail.pop(name)
        if needs_context and not self._context_ok():
            return CUresult.CUDA_ERROR_INVALID_CONTEXT
        return OK

    def device_view(self, ptr: int, nbytes: int) -> memoryview:
        """The bytes at device pointer ``ptr`` (inside one allocation), or an IndexError."""
        for base, buf in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return memoryview(buf)[ptr - base : ptr - base + nbytes]
        raise IndexError(f"device access of {nbytes} bytes at {ptr:#x} is outside every allocation")

    def device_array(self, ptr: int, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        return np.frombuffer(self.device_view(ptr, n * dtype.itemsize), dtype).reshape(shape)

    def _enqueue(self, stream, op) -> CUresult:
        if stream in self.capturing:
            self.capturing[stream].append(op)
            return OK
        try:
            op()
        except IndexError:
            return CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
        return OK

    # -- the module
    def _driver_module(self) -> SimpleNamespace:
        gpu = self

        def cuInit(flags):
            return (gpu._call("cuInit", False),)

        def cuDeviceGetCount():
            return (gpu._call("cuDeviceGetCount", False), gpu.devices)

        def cuDeviceGet(ordinal):
            r = gpu._call("cuDeviceGet", False)
            if ordinal >= gpu.devices:
                return (CUresult.CUDA_ERROR_INVALID_DEVICE, None)
            return (r, ordinal)

        def cuDevicePrimaryCtxRetain(dev):
            return (gpu._call("cuDevicePrimaryCtxRetain", False), gpu.contexts[dev])

        def cuCtxSetCurrent(ctx):
            r = gpu._call("cuCtxSetCurrent", False)
            gpu._local.ctx = ctx
            return (r,)

        def cuCtxGetCurrent():
            return (gpu._call("cuCtxGetCurrent", False), getattr(gpu._local, "ctx", None))

        def cuDeviceGetAttribute(attrib, dev):
            return (gpu._call("cuDeviceGetAttribute", False), gpu.cc[0 if "MAJOR" in attrib else 1])

        def cuDeviceGetName(length, dev):
            return (
                gpu._call("cuDeviceGetName", False),
                f"{gpu.name} {dev}".encode().ljust(length, b"\0"),
            )

        def cuMemAlloc(bytesize):
            r = gpu._call("cuMemAlloc")
            if r != OK:
                return (r, None)
            ptr = gpu._next_ptr
            gpu._next_ptr += (bytesize + 4095) // 4096 * 4096 + 4096  # a guard gap between blocks
            gpu.memory[ptr] = bytearray(bytesize)
            return (r, ptr)

        def cuMemFree(dptr):
            r = gpu._call("cuMemFree")
            if r == OK and gpu.memory.pop(int(dptr), None) is None:
                return (CUresult.CUDA_ERROR_INVALID_VALUE,)
            return (r,)

        def cuMemHostAlloc(bytesize, flags):
            r = gpu._call("cuMemHostAlloc")
            block = (ctypes.c_byte * bytesize)()
            gpu.host[ctypes.addressof(block)] = block
            return (r, ctypes.addressof(block))

        def cuMemFreeHost(p):
            gpu.host.pop(int(p), None)
            return (gpu._call("cuMemFreeHost", False),)

        def cuMemcpyHtoDAsync(dst, src, nbytes, stream):
            r = gpu._call("cuMemcpyHtoDAsync")
            if r != OK:
                return (r,)

            def op():
                gpu.device_view(int(dst), nbytes)[:] = ctypes.string_at(int(src), nbytes)

            return (gpu._enqueue(stream, op),)

        def cuMemcpyDtoHAsync(dst, src, nbytes, stream):
            r = gpu._call("cuMemcpyDtoHAsync")
            if r != OK:
                return (r,)

            def op():
                ctypes.memmove(int(dst), bytes(gpu.device_view(int(src), nbytes)), nbytes)

            return (gpu._enqueue(stream, op),)

        def cuStreamCreate(flags):
            r = gpu._call("cuStreamCreate")
            h = Handle("CUstream")
            gpu.live["stream"].add(h)
            return (r, h)

        def cuStreamDestroy(stream):
            gpu.live["stream"].discard(stream)
            return (gpu._call("cuStreamDestroy"),)

        def cuStreamSynchronize(stream):
            return (gpu._call("cuStreamSynchronize"),)

        def cuEventCreate(flags):
            r = gpu._call("cuEventCreate")
            h = Handle("CUevent")
            gpu.live["event"].add(h)
            return (r, h)

        def cuEventRecord(event, stream):
            r = gpu._call("cuEventRecord")
            if r == OK:
                gpu.events[event] = time.perf_counter()
            return (r,)

        def cuEventSynchronize(event):
            return (gpu._call("cuEventSynchronize"),)

        def cuEventElapsedTime(start, end):
            r = gpu._call("cuEventElapsedTime")
            return (r, (gpu.events.get(end, 0.0) - gpu.events.get(start, 0.0)) * 1e3)

        def cuEventDestroy(event):
            gpu.live["event"].discard(event)
            return (gpu._call("cuEventDestroy"),)

        def cuStreamBeginCapture(stream, mode):
            r = gpu._call("cuStreamBeginCapture")
            if r == OK:
                gpu.capturing[stream] = []
            return (r,)

        def cuStreamEndCapture(stream):
            r = gpu._call("cuStreamEndCapture")
            ops = gpu.capturing.pop(stream, None)
            if r != OK or ops is None:
                return (r if r != OK else CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, None)
            g = Handle("CUgraph")
            g.ops = ops
            gpu.live["graph"].add(g)
            return (r, g)

        def cuGraphInstantiate(graph, flags):
            r = gpu._call("cuGraphInstantiate")
            ex = Handle("CUgraphExec")
            ex.ops = list(graph.ops)
            gpu.live["exec"].add(ex)
            return (r, ex)

        def cuGraphDestroy(graph):
            gpu.live["graph"].discard(graph)
            return (gpu._call("cuGraphDestroy"),)

        def cuGraphLaunch(graph_exec, stream):
            r = gpu._call("cuGraphLaunch")
            if r != OK:
                return (r,)
            if graph_exec not in gpu.live["exec"]:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            for op in graph_exec.ops:
                r = gpu._enqueue(stream, op)
                if r != OK:
                    return (r,)
            return (OK,)

        def cuGraphExecDestroy(graph_exec):
            gpu.live["exec"].discard(graph_exec)
            return (gpu._call("cuGraphExecDestroy"),)

        def cuModuleLoadData(image):
            return (gpu._call("cuModuleLoadData"), Handle("CUmodule"))

        def cuModuleGetFunction(module, name):
            r = gpu._call("cuModuleGetFunction")
            fn = Handle("CUfunction")
            fn.name = name.decode()
            return (r, fn)

        def cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
            r = gpu._call("cuLaunchKernel")
            if r != OK:
                return (r,)
            args = _unpack(f.name, params)
            return (gpu._enqueue(stream, lambda: _KERNELS[f.name](gpu, *args)),)

        names = {k: v for k, v in locals().items() if k.startswith("cu")}
        return SimpleNamespace(
            CUresult=CUresult,
            CUdevice_attribute=SimpleNamespace(
                CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR="MAJOR",
                CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR="MINOR",
            ),
            CUstreamCaptureMode=SimpleNamespace(CU_STREAM_CAPTURE_MODE_THREAD_LOCAL=1),
            **names,
        )

    def _nvrtc_module(self) -> SimpleNamespace:
        gpu = self

        def nvrtcGetSupportedArchs():
            return (OK, list(gpu.nvrtc_archs))

        def nvrtcVersion():
            return (OK, 13, 0)

        def nvrtcCreateProgram(src, name, n, headers, include_names):
            return (OK, Handle("nvrtcProgram"))

        def nvrtcCompileProgram(prog, n, options):
            return (OK,)

        def nvrtcGetCUBINSize(prog):
            return (OK, 8)

        def nvrtcGetCUBIN(prog, buf):
            return (OK,)

        def nvrtcGetPTXSize(prog):
            return (OK, 8)

        def nvrtcGetPTX(prog, buf):
            return (OK,)

        def nvrtcDestroyProgram(prog):
            return (OK,)

        return SimpleNamespace(**{k: v for k, v in locals().items() if k.startswith("nvrtc")})


# ---------------------------------------------------------------------------- kernels

_CTYPES = {
    "P": ctypes.c_uint64,
    "i": ctypes.c_int32,
    "q": ctypes.c_int64,
    "H": ctypes.c_uint16,
    "f": ctypes.c_float,
}


def _unpack(name: str, params: int) -> list:
    """The kernel's arguments, read back from the driver's array of pointers to values."""
    kinds = SIGNATURES[name]
    ptrs = (ctypes.c_uint64 * len(kinds)).from_address(int(params))
    out = []
    for kind, p in zip(kinds, ptrs):
        if kind == "f3":
            out.append(np.ctypeslib.as_array((ctypes.c_float * 3).from_address(p)).copy())
        else:
            out.append(_CTYPES[kind].from_address(p).value)
    return out


def _cpu():
    from edgeseg import _cpu

    return _cpu


def _preprocess(half: bool):
    def run(gpu, img, H, W, pitch, out, h, w, mean, inv_std):
        frame = np.lib.stride_tricks.as_strided(
            gpu.device_array(img, (H * pitch,), np.uint8), (H, W, 3), (pitch, 3, 1)
        )
        dst = gpu.device_array(out, (1, 3, h, w), np.float16 if half else np.float32)
        cpu = _cpu()
        cpu.preprocess(
            np.ascontiguousarray(frame),
            dst,
            cpu.F16 if half else cpu.F32,
            mean.tolist(),
            inv_std.tolist(),
        )

    return run


def _argmax(half: bool):
    def run(gpu, scores, C, h, w, labels):
        s = gpu.device_array(scores, (1, C, h, w), np.float16 if half else np.float32)
        cpu = _cpu()
        cpu.postprocess(
            s,
            cpu.F16 if half else cpu.F32,
            gpu.device_array(labels, (h, w), np.uint8),
            False,
            None,
            None,
            None,
            0.5,
            1,
        )

    return run


def _bilinear(half: bool):
    def run(gpu, scores, C, h, w, labels, H, W):
        s = gpu.device_array(scores, (1, C, h, w), np.float16 if half else np.float32)
        cpu = _cpu()
        cpu.postprocess(
            s,
            cpu.F16 if half else cpu.F32,
            gpu.device_array(labels, (H, W), np.uint8),
            True,
            None,
            None,
            None,
            0.5,
            1,
        )

    return run


def _labels_from(dtype):
    def run(gpu, src, n, labels):
        gpu.device_array(labels, (n,), np.uint8)[:] = gpu.device_array(src, (n,), dtype).astype(
            np.uint8
        )

    return run


def _upsample_blend(gpu, small, h, w, labels, H, W, frame, pitch, overlay, colour_q, keep_q):
    ys = ((2 * np.arange(H) + 1) * h) // (2 * H)
    xs = ((2 * np.arange(W) + 1) * w) // (2 * W)
    lab = gpu.device_array(small, (h, w), np.uint8)[ys[:, None], xs[None, :]]
    gpu.device_array(labels, (H, W), np.uint8)[:] = lab
    if overlay:
        f = np.lib.stride_tricks.as_strided(
            gpu.device_array(frame, (H * pitch,), np.uint8), (H, W, 3), (pitch, 3, 1)
        )
        table = gpu.device_array(colour_q, (256, 4), np.uint16)
        t = ((f.astype(np.uint32) << 8) * keep_q) >> 16
        gpu.device_array(overlay, (H, W, 3), np.uint8)[:] = ((t + table[lab][..., :3]) >> 7).astype(
            np.uint8
        )


def _ema_reset_count(gpu, words):
    gpu.device_array(words, (2,), np.uint32)[0] = 0


def _ema_votes(half: bool):
    def run(gpu, x, ema, C, n, words):
        xs = gpu.device_array(x, (C, n), np.float16 if half else np.float32).astype(np.float32)
        avg = gpu.device_array(ema, (C, n), np.float32)
        gpu.device_array(words, (2,), np.uint32)[0] += np.count_nonzero(
            xs.argmax(0) != avg.argmax(0)
        )

    return run


def _ema_apply(half: bool):
    def run(gpu, x, ema, C, n, keep, fresh, words, limit):
        xs = gpu.device_array(x, (C, n), np.float16 if half else np.float32).astype(np.float32)
        avg = gpu.device_array(ema, (C, n), np.float32)
        count, force = gpu.device_array(words, (2,), np.uint32)
        if force or int(count) > limit:
            avg[...] = xs
        else:
            avg *= np.float32(keep)
            avg += xs * np.float32(fresh)

    return run


_KERNELS = {
    "ema_reset_count": _ema_reset_count,
    "ema_votes_f32": _ema_votes(False),
    "ema_votes_f16": _ema_votes(True),
    "ema_apply_f32": _ema_apply(False),
    "ema_apply_f16": _ema_apply(True),
    "preprocess_f32": _preprocess(False),
    "preprocess_f16": _preprocess(True),
    "argmax_f32": _argmax(False),
    "argmax_f16": _argmax(True),
    "bilinear_argmax_f32": _bilinear(False),
    "bilinear_argmax_f16": _bilinear(True),
    "labels_from_i64": _labels_from(np.int64),
    "labels_from_i32": _labels_from(np.int32),
    "upsample_blend": _upsample_blend,
}
assert set(_KERNELS) == set(SIGNATURES), "every kernel the host launches has a fake"
