"""A fake GPU shaped like cuda-python's ``cuda.bindings.driver`` and ``.nvrtc`` modules.

Same function names and arity, same ``(CUresult, value...)`` returns, handles that are objects
(``int(handle)`` gives the value, as with cuda-python's CUstream; an ``int`` is taken where
cuda-python takes one). Device memory is host memory here, bounds-checked on every copy and
kernel. What it holds code to, as a GPU would:

- **Contexts.** One is current per thread; every call that needs one fails with
  CUDA_ERROR_INVALID_CONTEXT on a thread that has none. Streams, events, functions and memory
  belong to the context current when they were made: a kernel launched on a stream of another
  context, or from a module loaded in another, is CUDA_ERROR_INVALID_HANDLE; a kernel that
  touches another device's memory faults (no peer access); copies work across devices (UVA).
- **Stream order.** Work enqueued on a stream runs later, in order, when something must wait for
  it: ``cuStreamSynchronize`` of that stream, ``cuEventSynchronize`` of an event recorded on it,
  a stream that ``cuStreamWaitEvent``s on such an event running, ``cuCtxSynchronize``,
  ``cuMemFree`` (it synchronises the device), a synchronous ``cuMemcpy*`` (the NULL stream and
  the *blocking* streams only), a device-to-pageable-host copy (it returns when done). So a
  result read before its synchronise is stale, and data made on one stream and read on another
  without an event is read before it is written. A copy from page-locked host memory reads it
  when it runs; one into page-locked memory marks its bytes ``POISON`` when it is enqueued, so
  the host reading them early sees garbage, not a lucky stale copy. From pageable memory the
  bytes are taken at the call, as the driver stages them (so such copies cannot be captured).
  An unknown or destroyed stream or event handle is CUDA_ERROR_INVALID_HANDLE, wherever it is
  passed.
- **Faults** (out of bounds, freed or foreign memory) happen when the work runs, and are
  sticky: the context is lost, and every later call returns CUDA_ERROR_ILLEGAL_ADDRESS.
- **Graphs.** While a stream captures, its work is recorded (a synchronise of it is
  CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED and invalidates the capture); a launch enqueues the
  recorded work, with the addresses and scalars it was captured with.
- **Memory** is handed out uninitialised (bytes 0xFF: NaN as float32, label 255) and freed
  addresses are reused, as a caching allocator would: reading what nobody wrote, or through a
  pointer kept after its free, gives wrong results, not old ones.
- **Kernels** exist only if NVRTC compiled them: the fake NVRTC checks its options (unknown
  ones are NVRTC_ERROR_INVALID_OPTION; ``--fmad=false`` and a supported
  ``--gpu-architecture`` are required) and reads the ``extern "C" __global__`` signatures from
  the source into the image; ``cuModuleLoadData`` refuses an image not built for the device.
  ``cuLaunchKernel`` checks the signature against ``edgeseg.runtime.cuda_driver.SIGNATURES``
  (what the host packs), the argument kinds (pointers must be device memory) and the launch
  shape (block limits; warp-sized blocks where the kernel votes per warp); a grid that does not
  cover the kernel's output leaves the pixels it misses unwritten. Kernels compute as the CPU
  extension (``edgeseg._cpu``), which computes what the CUDA kernels compute
  (tests/runtime/test_kernels_cuda.py proves them equal on a GPU).

For testing the logic around the GPU (pipelines, backends, fault handling); never a
substitute for the GPU tests.
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import json
import numbers
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from edgeseg.runtime.cuda_driver import SIGNATURES

POISON = 0xEE  # bytes of a page-locked buffer that a pending device-to-host copy will write
UNINITIALISED = 0xFF  # bytes of fresh device and page-locked memory


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_OUT_OF_MEMORY = 2
    CUDA_ERROR_INVALID_DEVICE = 101
    CUDA_ERROR_INVALID_IMAGE = 200
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_NOT_FOUND = 500
    CUDA_ERROR_NOT_READY = 600
    CUDA_ERROR_ILLEGAL_ADDRESS = 700
    CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901


class nvrtcResult(enum.IntEnum):
    NVRTC_SUCCESS = 0
    NVRTC_ERROR_INVALID_INPUT = 3
    NVRTC_ERROR_INVALID_PROGRAM = 4
    NVRTC_ERROR_INVALID_OPTION = 5
    NVRTC_ERROR_COMPILATION = 6


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


class Fault(Exception):
    """What a kernel or copy did that a GPU would fault on (CUDA_ERROR_ILLEGAL_ADDRESS)."""


class Stream(Handle):
    """A CUstream: its context, whether it syncs with the NULL stream, and its pending work."""

    def __init__(self, ctx, blocking: bool = True, null: bool = False) -> None:
        super().__init__("CUstream")
        self.ctx, self.blocking, self.null = ctx, blocking, null
        self.queue: deque = deque()
        self.enqueued = self.done = 0  # ops ever enqueued / run

    def __int__(self) -> int:
        return 0 if self.null else self.value


class Op:
    """One piece of stream work: ``run()`` when the stream reaches it; ``on_enqueue()`` when it
    is put on a stream (a page-locked destination is poisoned then)."""

    def __init__(self, run: Callable[[], None], on_enqueue: Callable[[], None] | None = None):
        self.run, self.on_enqueue = run, on_enqueue


class FakeGpu:
    """The state behind the fake modules: memory, contexts, streams, graphs, a call log."""

    def __init__(self, devices: int = 1, name: str = "Fake GPU") -> None:
        self.devices, self.name = devices, name
        self.calls: list[tuple] = []
        self.memory: dict[int, bytearray] = {}  # device pointer -> its bytes
        self.owner: dict[int, Handle] = {}  # device pointer -> the context that allocated it
        self.host: dict[int, ctypes.Array] = {}  # page-locked blocks
        self.live = {"stream": set(), "event": set(), "graph": set(), "exec": set()}
        self.functions: set[Handle] = set()
        self.capturing: dict[Stream, list] = {}
        self.invalidated: set[Stream] = set()  # captures a forbidden call broke
        self.fail: dict[str, CUresult] = {}  # function name -> the error it returns next
        self.sticky: CUresult | None = None  # a fault: the context is lost
        self.faults: list[str] = []  # what faulted, for the test's message
        self.launches: list[tuple] = []  # (kernel, grid, block)
        self._local = threading.local()
        self._lock = threading.RLock()
        self._active = 0  # ops running now (under the lock: on this thread)
        self._next_ptr = 0x7F0000000000
        self._free: dict[int, list[int]] = {}  # rounded size -> freed addresses, reused LIFO
        self.contexts = {d: Handle("CUcontext") for d in range(devices)}
        self.device_of = {ctx: d for d, ctx in self.contexts.items()}
        self.null_streams = {ctx: Stream(ctx, null=True) for ctx in self.contexts.values()}
        self.events: dict[Handle, float] = {}  # event -> time its record ran
        self.recorded: dict[Handle, tuple[Stream, int]] = {}  # event -> (stream, position)
        self.cc = (8, 7)  # compute capability (Jetson Orin)
        self.nvrtc_archs = [75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121]  # NVRTC 13.0
        self.nvrtc_options: list[list[str]] = []  # every compile's options
        self.cu = self._driver_module()
        self.nvrtc = self._nvrtc_module()

    # -- helpers
    @property
    def ctx(self):
        return getattr(self._local, "ctx", None)

    def _call(self, name: str, needs_context: bool = True) -> CUresult:
        self.calls.append((name, threading.get_ident()))
        if name in self.fail:
            return self.fail.pop(name)
        if needs_context and self.ctx is None:
            return CUresult.CUDA_ERROR_INVALID_CONTEXT
        if needs_context and self.sticky is not None:
            return self.sticky
        return OK

    def stream(self, handle) -> Stream | None:
        """The live stream ``handle`` names (a Stream, its int, 0/None: the NULL stream of the
        current context), or None: unknown or destroyed."""
        if handle is None or (not isinstance(handle, Handle) and int(handle) == 0):
            return self.null_streams.get(self.ctx)
        if isinstance(handle, Stream):
            return handle if handle in self.live["stream"] or handle.null else None
        value = int(handle)
        return next((s for s in self.live["stream"] if s.value == value), None)

    def _find(self, ptr: int, nbytes: int) -> int:
        for base, buf in self.memory.items():
            if base <= ptr and ptr + nbytes <= base + len(buf):
                return base
        raise Fault(f"device access of {nbytes} bytes at {ptr:#x} is outside every allocation")

    def device_view(self, ptr: int, nbytes: int, ctx=None) -> memoryview:
        """The bytes at device pointer ``ptr`` (inside one allocation, of context ``ctx`` when
        given: a kernel's own device), or a :class:`Fault`."""
        base = self._find(ptr, nbytes)
        if ctx is not None and self.owner[base] is not ctx:
            raise Fault(f"a kernel on {ctx} touched {ptr:#x}, memory of {self.owner[base]}")
        return memoryview(self.memory[base])[ptr - base : ptr - base + nbytes]

    def device_array(self, ptr: int, shape, dtype, ctx=None) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape))
        return np.frombuffer(self.device_view(ptr, n * dtype.itemsize, ctx), dtype).reshape(shape)

    def _pinned(self, ptr: int, nbytes: int) -> bool:
        return any(
            base <= ptr and ptr + nbytes <= base + ctypes.sizeof(b) for base, b in self.host.items()
        )

    def _host_check(self, ptr: int, nbytes: int, pinned: bool) -> None:
        if pinned and not self._pinned(ptr, nbytes):
            raise Fault(f"a copy used page-locked memory at {ptr:#x} after cuMemFreeHost")

    # -- stream order
    def _enqueue(self, stream: Stream, op: Op) -> CUresult:
        """Put ``op`` on ``stream`` (or into its capture); nothing runs here."""
        with self._lock:
            if stream in self.capturing:
                self.capturing[stream].append(op)
                return OK
            if self.sticky is not None:
                return self.sticky
            if op.on_enqueue is not None:
                op.on_enqueue()
            stream.queue.append(op)
            stream.enqueued += 1
            return OK

    def _run(self, stream: Stream, upto: int | None = None, nested: bool = False) -> CUresult:
        """Run ``stream``'s work up to position ``upto`` (all of it by default). ``nested``: from
        inside a running op (a wait on an event); otherwise a call made while an op runs on this
        thread (a finalizer's cuMemFree) runs nothing, as the op in flight must finish first."""
        with self._lock:
            if self._active and not nested:
                return self.sticky or OK
            upto = stream.enqueued if upto is None else upto
            while stream.done < upto and self.sticky is None:
                op = stream.queue.popleft()
                stream.done += 1
                self._active += 1
                try:
                    op.run()
                except (Fault, IndexError) as e:
                    self.faults.append(str(e))
                    self.sticky = CUresult.CUDA_ERROR_ILLEGAL_ADDRESS
                finally:
                    self._active -= 1
            if self.sticky is not None:
                for s in [*self.live["stream"], *self.null_streams.values()]:
                    s.done, s.queue = s.enqueued, deque()
            return self.sticky or OK

    def _run_all(self, ctx=None, only_blocking: bool = False) -> CUresult:
        streams = [*self.null_streams.values(), *self.live["stream"]]
        for s in streams:
            if (ctx is None or s.ctx is ctx) and (not only_blocking or s.blocking):
                self._run(s)  # what a capture records is not on the queue
        return self.sticky or OK

    def pending(self) -> int:
        """Ops enqueued and not yet run, over every stream."""
        return sum(len(s.queue) for s in [*self.live["stream"], *self.null_streams.values()])

    # -- the module
    def _driver_module(self) -> SimpleNamespace:  # noqa: C901 - one closure per entry point
        gpu = self

        def stream_arg(name, stream, same_context=False):
            """(error, Stream) for a call taking ``stream``."""
            r = gpu._call(name)
            if r != OK:
                return r, None
            s = gpu.stream(stream)
            if s is None or (same_context and s.ctx is not gpu.ctx):
                return CUresult.CUDA_ERROR_INVALID_HANDLE, None
            return OK, s

        def cuInit(flags):
            return (gpu._call("cuInit", False),)

        def cuDeviceGetCount():
            return (gpu._call("cuDeviceGetCount", False), gpu.devices)

        def cuDeviceGet(ordinal):
            r = gpu._call("cuDeviceGet", False)
            if not 0 <= ordinal < gpu.devices:
                return (CUresult.CUDA_ERROR_INVALID_DEVICE, None)
            return (r, ordinal)

        def cuDevicePrimaryCtxRetain(dev):
            return (gpu._call("cuDevicePrimaryCtxRetain", False), gpu.contexts[dev])

        def cuCtxSetCurrent(ctx):
            r = gpu._call("cuCtxSetCurrent", False)
            if r == OK and ctx is not None and ctx not in gpu.device_of:
                return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
            if r == OK:
                gpu._local.ctx = ctx
            return (r,)

        def cuCtxGetCurrent():
            return (gpu._call("cuCtxGetCurrent", False), gpu.ctx)

        def cuCtxSynchronize():
            r = gpu._call("cuCtxSynchronize")
            return (r if r != OK else gpu._run_all(gpu.ctx),)

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
            size = (bytesize + 4095) // 4096 * 4096
            with gpu._lock:
                reuse = gpu._free.get(size)
                if reuse:
                    ptr = reuse.pop()
                else:
                    ptr = gpu._next_ptr
                    gpu._next_ptr += size + 4096  # a guard gap between blocks
                gpu.memory[ptr] = bytearray([UNINITIALISED]) * bytesize
                gpu.owner[ptr] = gpu.ctx
            return (r, ptr)

        def cuMemFree(dptr):
            r = gpu._call("cuMemFree")
            if r != OK:
                return (r,)
            r = gpu._run_all()  # cuMemFree synchronises the device first
            with gpu._lock:
                buf = gpu.memory.pop(int(dptr), None)
                if buf is None:
                    return (CUresult.CUDA_ERROR_INVALID_VALUE,)
                gpu.owner.pop(int(dptr))
                gpu._free.setdefault((len(buf) + 4095) // 4096 * 4096, []).append(int(dptr))
            return (r,)

        def cuMemHostAlloc(bytesize, flags):
            r = gpu._call("cuMemHostAlloc")
            block = (ctypes.c_byte * bytesize)()
            ctypes.memset(block, UNINITIALISED, bytesize)
            gpu.host[ctypes.addressof(block)] = block
            return (r, ctypes.addressof(block))

        def cuMemFreeHost(p):
            gpu.host.pop(int(p), None)  # pending copies that use it fault when they run
            return (gpu._call("cuMemFreeHost", False),)

        def htod(name, dst, src, nbytes, stream):
            r, s = stream_arg(name, stream)
            if r != OK:
                return r, None
            dst, src = int(dst), int(src)
            pinned = gpu._pinned(src, nbytes)
            if not pinned and s in gpu.capturing:  # staged synchronously: not capturable
                gpu.invalidated.add(s)
                return CUresult.CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, s
            if pinned:  # read when the copy runs

                def read():
                    gpu._host_check(src, nbytes, pinned)
                    return ctypes.string_at(src, nbytes)

            else:  # pageable: the driver stages the bytes before it returns
                staged = ctypes.string_at(src, nbytes)

                def read():
                    return staged

            def run():
                gpu.device_view(dst, nbytes)[:] = read()

            return gpu._enqueue(s, Op(run)), s

        def dtoh(name, dst, src, nbytes, stream):
            r, s = stream_arg(name, stream)
            if r != OK:
                return r, None
            dst, src = int(dst), int(src)
            pinned = gpu._pinned(dst, nbytes)
            if not pinned and s in gpu.capturing:  # synchronous: not capturable
                gpu.invalidated.add(s)
                return CUresult.CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED, s

            def run():
                gpu._host_check(dst, nbytes, pinned)
                ctypes.memmove(dst, bytes(gpu.device_view(src, nbytes)), nbytes)

            def poison():
                ctypes.memset(dst, POISON, nbytes)

            r = gpu._enqueue(s, Op(run, poison if pinned else None))
            if r == OK and not pinned:
                r = gpu._run(s)  # into pageable memory: returns once the copy is done
            return r, s

        def cuMemcpyHtoDAsync(dst, src, nbytes, stream):
            return (htod("cuMemcpyHtoDAsync", dst, src, nbytes, stream)[0],)

        def cuMemcpyDtoHAsync(dst, src, nbytes, stream):
            return (dtoh("cuMemcpyDtoHAsync", dst, src, nbytes, stream)[0],)

        def cuMemcpyHtoD(dst, src, nbytes):
            """Synchronous, on the NULL stream: after the NULL and blocking streams' work."""
            r = gpu._call("cuMemcpyHtoD")
            if r == OK:
                gpu._run_all(gpu.ctx, only_blocking=True)
                r, s = htod("cuMemcpyHtoD", dst, src, nbytes, 0)
                r = r if r != OK else gpu._run(s)
            return (r,)

        def cuMemcpyDtoH(dst, src, nbytes):
            r = gpu._call("cuMemcpyDtoH")
            if r == OK:
                gpu._run_all(gpu.ctx, only_blocking=True)
                r, s = dtoh("cuMemcpyDtoH", dst, src, nbytes, 0)
                r = r if r != OK else gpu._run(s)
            return (r,)

        def cuStreamCreate(flags):
            r = gpu._call("cuStreamCreate")
            if r != OK:
                return (r, None)
            h = Stream(gpu.ctx, blocking=not flags & 1)  # CU_STREAM_NON_BLOCKING = 1
            gpu.live["stream"].add(h)
            return (r, h)

        def cuStreamDestroy(stream):
            r, s = stream_arg("cuStreamDestroy", stream)
            if r != OK or s.null:
                return (r if r != OK else CUresult.CUDA_ERROR_INVALID_HANDLE,)
            r = gpu._run(s)  # its pending work still completes
            gpu.live["stream"].discard(s)
            return (r,)

        def cuStreamSynchronize(stream):
            r, s = stream_arg("cuStreamSynchronize", stream)
            if r != OK:
                return (r,)
            if s in gpu.capturing:
                gpu.invalidated.add(s)
                return (CUresult.CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,)
            return (gpu._run(s),)

        def cuStreamQuery(stream):
            r, s = stream_arg("cuStreamQuery", stream)
            if r != OK:
                return (r,)
            return (CUresult.CUDA_ERROR_NOT_READY if s.queue else OK,)

        def cuStreamWaitEvent(stream, event, flags):
            r, s = stream_arg("cuStreamWaitEvent", stream)
            if r != OK:
                return (r,)
            if event not in gpu.live["event"]:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            target = gpu.recorded.get(event)
            if target is None:
                return (OK,)  # never recorded: nothing to wait for

            def run():
                gpu._run(*target, nested=True)

            return (gpu._enqueue(s, Op(run)),)

        def cuEventCreate(flags):
            r = gpu._call("cuEventCreate")
            if r != OK:
                return (r, None)
            h = Handle("CUevent")
            h.ctx = gpu.ctx
            gpu.live["event"].add(h)
            return (r, h)

        def cuEventRecord(event, stream):
            r, s = stream_arg("cuEventRecord", stream)
            if r != OK:
                return (r,)
            if event not in gpu.live["event"] or event.ctx is not s.ctx:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)

            def run():
                gpu.events[event] = time.perf_counter()

            if s in gpu.capturing:  # a record node of the graph
                return (gpu._enqueue(s, Op(run)),)
            gpu.events.pop(event, None)  # not complete until the record runs
            r = gpu._enqueue(s, Op(run))
            if r == OK:
                gpu.recorded[event] = (s, s.enqueued)
            return (r,)

        def cuEventSynchronize(event):
            r = gpu._call("cuEventSynchronize")
            if r != OK:
                return (r,)
            if event not in gpu.live["event"]:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            target = gpu.recorded.get(event)
            return (gpu._run(*target) if target else OK,)

        def cuEventQuery(event):
            r = gpu._call("cuEventQuery")
            if r != OK or event not in gpu.live["event"]:
                return (r if r != OK else CUresult.CUDA_ERROR_INVALID_HANDLE,)
            target = gpu.recorded.get(event)
            return (OK if target is None or target[0].done >= target[1] else CUresult(600),)

        def cuEventElapsedTime(start, end):
            r = gpu._call("cuEventElapsedTime")
            if r != OK:
                return (r, None)
            if start not in gpu.live["event"] or end not in gpu.live["event"]:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE, None)
            if start.ctx is not end.ctx:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE, None)
            if start not in gpu.events or end not in gpu.events:
                return (CUresult.CUDA_ERROR_NOT_READY, None)  # a record has not run yet
            return (r, (gpu.events[end] - gpu.events[start]) * 1e3)

        def cuEventDestroy(event):
            r = gpu._call("cuEventDestroy")
            if r == OK and event not in gpu.live["event"]:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            gpu.live["event"].discard(event)
            gpu.recorded.pop(event, None)
            return (r,)

        def cuStreamBeginCapture(stream, mode):
            r, s = stream_arg("cuStreamBeginCapture", stream)
            if r != OK:
                return (r,)
            if s.null or s in gpu.capturing:
                return (CUresult.CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED,)
            gpu.capturing[s] = []
            return (OK,)

        def cuStreamEndCapture(stream):
            r = gpu._call("cuStreamEndCapture")
            s = gpu.stream(stream)
            ops = gpu.capturing.pop(s, None)
            broken = s in gpu.invalidated
            gpu.invalidated.discard(s)
            if r != OK or ops is None or broken:
                return (r if r != OK else CUresult.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED, None)
            g = Handle("CUgraph")
            g.ops, g.ctx = ops, s.ctx
            gpu.live["graph"].add(g)
            return (r, g)

        def cuGraphInstantiate(graph, flags):
            r = gpu._call("cuGraphInstantiate")
            if r != OK:
                return (r, None)
            if graph not in gpu.live["graph"]:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE, None)
            ex = Handle("CUgraphExec")
            ex.ops, ex.ctx = list(graph.ops), graph.ctx
            gpu.live["exec"].add(ex)
            return (r, ex)

        def cuGraphDestroy(graph):
            gpu.live["graph"].discard(graph)
            return (gpu._call("cuGraphDestroy"),)

        def cuGraphLaunch(graph_exec, stream):
            r, s = stream_arg("cuGraphLaunch", stream, same_context=True)
            if r != OK:
                return (r,)
            if graph_exec not in gpu.live["exec"] or graph_exec.ctx is not s.ctx:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            for op in graph_exec.ops:
                r = gpu._enqueue(s, op)
                if r != OK:
                    return (r,)
            return (OK,)

        def cuGraphExecDestroy(graph_exec):
            gpu.live["exec"].discard(graph_exec)
            return (gpu._call("cuGraphExecDestroy"),)

        def cuModuleLoadData(image):
            r = gpu._call("cuModuleLoadData")
            if r != OK:
                return (r, None)
            r, kernels = _load_image(bytes(image), gpu.cc)
            if r != OK:
                return (r, None)
            mod = Handle("CUmodule")
            mod.kernels, mod.ctx = kernels, gpu.ctx
            return (OK, mod)

        def cuModuleGetFunction(module, name):
            r = gpu._call("cuModuleGetFunction")
            if r != OK:
                return (r, None)
            name = name.decode()
            if name not in module.kernels:
                return (CUresult.CUDA_ERROR_NOT_FOUND, None)
            fn = Handle("CUfunction")
            fn.name, fn.ctx, fn.signature = name, module.ctx, module.kernels[name]
            gpu.functions.add(fn)
            return (r, fn)

        def cuLaunchKernel(f, gx, gy, gz, bx, by, bz, shared, stream, params, extra):
            r, s = stream_arg("cuLaunchKernel", stream, same_context=True)
            if r != OK:
                return (r,)
            if f not in gpu.functions or f.ctx is not gpu.ctx:
                return (CUresult.CUDA_ERROR_INVALID_HANDLE,)
            grid, block = (gx, gy, gz), (bx, by, bz)
            kernel = _KERNELS.get(f.name)
            if (
                kernel is None
                or f.signature != SIGNATURES.get(f.name)  # the host packs another parameter list
                or extra not in (0, None)
                or not _launchable(grid, block, shared)
                or (kernel.warps and (bx * by * bz) % 32)
            ):
                return (CUresult.CUDA_ERROR_INVALID_VALUE,)
            args = _unpack(f.signature, params)
            if not _kinds_ok(f.signature, args, kernel.nullable):
                return (CUresult.CUDA_ERROR_INVALID_VALUE,)
            gpu.launches.append((f.name, grid, block))
            ctx = gpu.ctx

            def run():
                kernel.launch(gpu, ctx, grid, block, args)

            return (gpu._enqueue(s, Op(run)),)

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
        programs: dict[Handle, dict] = {}

        def nvrtcGetSupportedArchs():
            return (OK, list(gpu.nvrtc_archs))

        def nvrtcVersion():
            return (OK, 13, 0)

        def nvrtcCreateProgram(src, name, n, headers, include_names):
            if n != len(headers) or n != len(include_names):
                return (nvrtcResult.NVRTC_ERROR_INVALID_INPUT, None)
            prog = Handle("nvrtcProgram")
            programs[prog] = {"src": bytes(src).decode(), "log": b"", "image": None}
            return (OK, prog)

        def nvrtcCompileProgram(prog, n, options):
            if prog not in programs:
                return (nvrtcResult.NVRTC_ERROR_INVALID_PROGRAM,)
            if n != len(options):
                return (nvrtcResult.NVRTC_ERROR_INVALID_INPUT,)
            opts = [bytes(o).decode() for o in options]
            gpu.nvrtc_options.append(opts)
            p = programs[prog]
            r, target, log = _check_nvrtc_options(opts, gpu.nvrtc_archs)
            if r == OK:
                kernels = _kernel_signatures(p["src"])
                head = b"\x7fELF" if target.startswith("sm_") else b"//\n// fake PTX\n"
                body = json.dumps({"arch": target, "kernels": kernels}).encode()
                p["image"] = (target, head + b"\n" + body)
            p["log"] = log.encode()
            return (r,)

        def _image(prog, cubin):
            p = programs.get(prog)
            if p is None or p["image"] is None:
                return None
            target, image = p["image"]
            return image if cubin == target.startswith("sm_") else b""  # no CUBIN of compute_XX

        def _write(buf, data):
            if len(buf) < len(data):
                return nvrtcResult.NVRTC_ERROR_INVALID_INPUT
            if data:  # into the caller's bytes object, as cuda-python does
                address = ctypes.cast(ctypes.c_char_p(buf), ctypes.c_void_p).value
                ctypes.memmove(address, data, len(data))
            return OK

        def nvrtcGetCUBINSize(prog):
            image = _image(prog, True)
            return (OK, len(image)) if image is not None else (nvrtcResult(4), None)

        def nvrtcGetCUBIN(prog, buf):
            image = _image(prog, True)
            return (_write(buf, image) if image is not None else nvrtcResult(4),)

        def nvrtcGetPTXSize(prog):
            image = _image(prog, False)
            return (OK, len(image)) if image is not None else (nvrtcResult(4), None)

        def nvrtcGetPTX(prog, buf):
            image = _image(prog, False)
            return (_write(buf, image) if image is not None else nvrtcResult(4),)

        def nvrtcGetProgramLogSize(prog):
            return (OK, len(programs[prog]["log"]) + 1)

        def nvrtcGetProgramLog(prog, buf):
            return (_write(buf, programs[prog]["log"]),)

        def nvrtcDestroyProgram(prog):
            return (OK if programs.pop(prog, None) else nvrtcResult(4),)

        return SimpleNamespace(**{k: v for k, v in locals().items() if k.startswith("nvrtc")})


# ---------------------------------------------------------------------------- NVRTC and images

_FLAG_OPTIONS = {
    "-std=c++17",
    "--std=c++17",
    "-std=c++20",
    "--std=c++20",
    "-lineinfo",
    "--generate-line-info",
    "-G",
    "--device-debug",
    "-w",
    "--disable-warnings",
    "-default-device",
    "--use_fast_math",
    "-use_fast_math",
    "--extra-device-vectorization",
}
_VALUE_OPTIONS = ("--fmad=", "-fmad=", "--gpu-architecture=", "-arch=", "-I", "--include-path=")
_VALUE_OPTIONS += ("-D", "--define-macro=", "--maxrregcount=", "-maxrregcount=")


def _check_nvrtc_options(opts: list[str], supported: list[int]) -> tuple[int, str, str]:
    """(nvrtcResult, target architecture, log) of a compile with ``opts``."""
    for o in opts:
        if o not in _FLAG_OPTIONS and not o.startswith(_VALUE_OPTIONS):
            return nvrtcResult.NVRTC_ERROR_INVALID_OPTION, "", f"unrecognized option {o!r}"
    archs = [o.split("=", 1)[1] for o in opts if o.startswith(("--gpu-architecture=", "-arch="))]
    fmad = [o.split("=", 1)[1] for o in opts if o.startswith(("--fmad=", "-fmad="))]
    if any(v not in ("true", "false") for v in fmad):
        return nvrtcResult.NVRTC_ERROR_INVALID_OPTION, "", f"invalid value for --fmad: {fmad}"
    for a in archs:
        m = re.fullmatch(r"(sm|compute)_(\d+)", a)
        if m is None or int(m.group(2)) not in supported:
            return nvrtcResult.NVRTC_ERROR_INVALID_OPTION, "", f"invalid --gpu-architecture {a}"
    if len(archs) != 1:
        log = "edgeseg builds for exactly one --gpu-architecture (the device's), got " + str(archs)
        return nvrtcResult.NVRTC_ERROR_COMPILATION, "", log
    if fmad[-1:] != ["false"] or "--use_fast_math" in opts or "-use_fast_math" in opts:
        log = "edgeseg's kernels must be built with --fmad=false (the CPU extension's rounding)"
        return nvrtcResult.NVRTC_ERROR_COMPILATION, "", log
    return OK, archs[0], ""


_C_KINDS = {"int": "i", "i64": "q", "long long": "q", "u16": "H", "float": "f", "float3": "f3"}


def _kernel_signatures(src: str) -> dict[str, list[str]]:
    """The ``__global__`` entry points of ``src`` and their parameter kinds (SIGNATURES')."""
    out = {}
    for name, params in re.findall(r"__global__\s+void\s+(\w+)\s*\(([^)]*)\)", src):
        kinds = []
        for p in params.split(","):
            ctype = re.sub(r"\bconst\b|__restrict__", " ", p).strip().rsplit(None, 1)[0]
            ctype = " ".join(ctype.split())
            kinds.append("P" if "*" in p else _C_KINDS.get(ctype, "?" + ctype))
        out[name] = kinds
    return out


def _load_image(image: bytes, cc: tuple[int, int]) -> tuple[CUresult, dict]:
    """(result, kernels) of ``cuModuleLoadData``: a CUBIN runs on its major version at the same
    or a higher minor, PTX on the same or a newer device."""
    head, _, body = image.partition(b"\n{")
    try:
        meta = json.loads(b"{" + body)
    except ValueError:
        return CUresult.CUDA_ERROR_INVALID_IMAGE, {}
    kind, num = meta["arch"].split("_")
    dev, arch = cc[0] * 10 + cc[1], int(num)
    if (kind == "sm") != image.startswith(b"\x7fELF"):
        return CUresult.CUDA_ERROR_INVALID_IMAGE, {}
    fits = arch // 10 == dev // 10 and arch <= dev if kind == "sm" else arch <= dev
    if not fits:
        return CUresult.CUDA_ERROR_NO_BINARY_FOR_GPU, {}
    return OK, {k: tuple(v) for k, v in meta["kernels"].items()}


# ---------------------------------------------------------------------------- kernels

_CTYPES = {
    "P": ctypes.c_uint64,
    "i": ctypes.c_int32,
    "q": ctypes.c_int64,
    "H": ctypes.c_uint16,
    "f": ctypes.c_float,
}


def _launchable(grid, block, shared) -> bool:
    """The launch limits every CUDA GPU since Kepler has."""
    gx, gy, gz = grid
    bx, by, bz = block
    return (
        all(isinstance(v, numbers.Integral) and v >= 1 for v in (*grid, *block))
        and gx < 2**31
        and gy <= 65535
        and gz <= 65535
        and bx <= 1024
        and by <= 1024
        and bz <= 64
        and bx * by * bz <= 1024
        and 0 <= shared <= 48 * 1024
    )


def _unpack(kinds, params: int) -> list:
    """The kernel's arguments, read back from the driver's array of pointers to values."""
    ptrs = (ctypes.c_uint64 * len(kinds)).from_address(int(params))
    out = []
    for kind, p in zip(kinds, ptrs):
        if kind == "f3":
            out.append(np.ctypeslib.as_array((ctypes.c_float * 3).from_address(p)).copy())
        else:
            out.append(_CTYPES[kind].from_address(p).value)
    return out


def _kinds_ok(kinds, args, nullable) -> bool:
    """Pointers look like device pointers (the fake's allocations are at 0x7F0000000000 and up),
    scalars like what the kernel takes (no negative sizes)."""
    for i, (kind, a) in enumerate(zip(kinds, args)):
        if kind == "P" and not (a >= 0x7F0000000000 or (a == 0 and i in nullable)):
            return False
        if kind in "iq" and a < 0:
            return False
    return True


class _Kernel:
    """How one CUDA kernel runs on the fake: what it writes per thread, so a launch that does not
    cover its output leaves the rest as it was.

    ``cpu(gpu, ctx, *args)`` computes the whole output as the CPU extension does; ``extent(args)``
    is (rows, cols) of its 2D thread grid (x: columns, y: rows) or (n,) of a 1D one;
    ``outputs(args)`` the (pointer, shape, dtype, axes) it writes, ``axes`` the array dims that
    are (y, x) or (i,)."""

    def __init__(self, cpu, extent=None, outputs=None, nullable=(), warps=False) -> None:
        self.cpu, self.extent, self.outputs = cpu, extent, outputs
        self.nullable, self.warps = set(nullable), warps

    def launch(self, gpu, ctx, grid, block, args) -> None:
        covered = (grid[1] * block[1], grid[0] * block[0])  # (y, x) threads
        if self.extent is None:  # one thread's work, or its own coverage rule
            self.cpu(gpu, ctx, grid, block, *args)
            return
        extent = self.extent(args)
        if len(extent) == 1:
            covered = (grid[0] * block[0],)
        if all(c >= e for c, e in zip(covered, extent)):
            self.cpu(gpu, ctx, *args)
            return
        outs = [(gpu.device_array(p, s, d, ctx), ax) for p, s, d, ax in self.outputs(args)]
        before = [a.copy() for a, _ in outs]
        self.cpu(gpu, ctx, *args)
        for (arr, axes), old in zip(outs, before):  # the threads the grid never ran
            for ax, c in zip(axes, covered):
                index = [slice(None)] * arr.ndim
                index[ax] = slice(c, None)
                arr[tuple(index)] = old[tuple(index)]


def _cpu():
    from edgeseg import _cpu

    return _cpu


def _frame(gpu, ctx, img, H, W, pitch):
    if pitch < 3 * W:
        raise Fault(f"row pitch {pitch} is shorter than a row of {W} BGR pixels")
    flat = gpu.device_array(img, ((H - 1) * pitch + 3 * W,), np.uint8, ctx)
    return np.lib.stride_tricks.as_strided(flat, (H, W, 3), (pitch, 3, 1))


def _preprocess(half: bool) -> _Kernel:
    def run(gpu, ctx, img, H, W, pitch, out, h, w, mean, inv_std):
        frame = _frame(gpu, ctx, img, H, W, pitch)
        dst = gpu.device_array(out, (1, 3, h, w), np.float16 if half else np.float32, ctx)
        cpu = _cpu()
        cpu.preprocess(
            np.ascontiguousarray(frame),
            dst,
            cpu.F16 if half else cpu.F32,
            mean.tolist(),
            inv_std.tolist(),
        )

    dtype = np.float16 if half else np.float32
    return _Kernel(
        run,
        extent=lambda a: (a[5], a[6]),
        outputs=lambda a: [(a[4], (1, 3, a[5], a[6]), dtype, (2, 3))],
    )


def _argmax(half: bool) -> _Kernel:
    def run(gpu, ctx, scores, C, h, w, labels):
        s = gpu.device_array(scores, (1, C, h, w), np.float16 if half else np.float32, ctx)
        cpu = _cpu()
        out = gpu.device_array(labels, (h, w), np.uint8, ctx)
        cpu.postprocess(s, cpu.F16 if half else cpu.F32, out, False, None, None, None, 0.5, 1)

    return _Kernel(
        run,
        extent=lambda a: (a[2], a[3]),
        outputs=lambda a: [(a[4], (a[2], a[3]), np.uint8, (0, 1))],
    )


def _bilinear(half: bool) -> _Kernel:
    def run(gpu, ctx, scores, C, h, w, labels, H, W):
        s = gpu.device_array(scores, (1, C, h, w), np.float16 if half else np.float32, ctx)
        cpu = _cpu()
        out = gpu.device_array(labels, (H, W), np.uint8, ctx)
        cpu.postprocess(s, cpu.F16 if half else cpu.F32, out, True, None, None, None, 0.5, 1)

    return _Kernel(
        run,
        extent=lambda a: (a[5], a[6]),
        outputs=lambda a: [(a[4], (a[5], a[6]), np.uint8, (0, 1))],
    )


def _conf_kernel(half: bool, bilinear: bool) -> _Kernel:
    """argmax_conf_* (labels and confidence at model size) or bilinear_argmax_conf_* (at the
    frame's, after the resize), both by the CPU extension's kernel."""

    def run(gpu, ctx, scores, C, h, w, labels, conf, *frame_hw):
        H, W = frame_hw if bilinear else (h, w)
        s = gpu.device_array(scores, (1, C, h, w), np.float16 if half else np.float32, ctx)
        cpu = _cpu()
        out = gpu.device_array(labels, (H, W), np.uint8, ctx)
        c = gpu.device_array(conf, (H, W), np.uint8, ctx)
        cpu.postprocess(s, cpu.F16 if half else cpu.F32, out, bilinear, None, None, None, 0.5, 1, c)

    size = (lambda a: (a[6], a[7])) if bilinear else (lambda a: (a[2], a[3]))
    return _Kernel(
        run,
        extent=size,
        outputs=lambda a: [(a[4], size(a), np.uint8, (0, 1)), (a[5], size(a), np.uint8, (0, 1))],
    )


def _labels_from(dtype) -> _Kernel:
    def run(gpu, ctx, src, n, labels):
        gpu.device_array(labels, (n,), np.uint8, ctx)[:] = gpu.device_array(
            src, (n,), dtype, ctx
        ).astype(np.uint8)

    return _Kernel(
        run, extent=lambda a: (a[1],), outputs=lambda a: [(a[2], (a[1],), np.uint8, (0,))]
    )


def _upsample_blend_run(gpu, ctx, small, h, w, labels, H, W, frame, pitch, overlay, colour, keep):
    ys = ((2 * np.arange(H) + 1) * h) // (2 * H)
    xs = ((2 * np.arange(W) + 1) * w) // (2 * W)
    lab = gpu.device_array(small, (h, w), np.uint8, ctx)[ys[:, None], xs[None, :]]
    gpu.device_array(labels, (H, W), np.uint8, ctx)[:] = lab
    if overlay:
        f = _frame(gpu, ctx, frame, H, W, pitch)
        table = gpu.device_array(colour, (256, 4), np.uint16, ctx)
        t = ((f.astype(np.uint32) << 8) * keep) >> 16
        gpu.device_array(overlay, (H, W, 3), np.uint8, ctx)[:] = (
            (t + table[lab][..., :3]) >> 7
        ).astype(np.uint8)


_upsample_blend = _Kernel(
    _upsample_blend_run,
    extent=lambda a: (a[4], a[5]),
    outputs=lambda a: (
        [(a[3], (a[4], a[5]), np.uint8, (0, 1))]
        + ([(a[8], (a[4], a[5], 3), np.uint8, (0, 1))] if a[8] else [])
    ),
    nullable=(6, 8, 9),  # frame, overlay, colour table: unused without an overlay
)


def _ema_reset_count_run(gpu, ctx, grid, block, words):
    gpu.device_array(words, (2,), np.uint32, ctx)[0] = 0


def _ema_votes(half: bool) -> _Kernel:
    def run(gpu, ctx, grid, block, x, ema, C, n, words):
        # Threads i < n vote; a grid that runs every i several times (y or z) counts it again.
        covered = min(n, grid[0] * block[0])
        repeats = grid[1] * grid[2] * block[1] * block[2]
        xs = gpu.device_array(x, (C, n), np.float16 if half else np.float32, ctx)
        avg = gpu.device_array(ema, (C, n), np.float32, ctx)
        xs, avg = xs[:, :covered].astype(np.float32), avg[:, :covered]
        votes = np.count_nonzero(xs.argmax(0) != avg.argmax(0)) * repeats
        gpu.device_array(words, (2,), np.uint32, ctx)[0] += np.uint32(votes)

    return _Kernel(run, warps=True)  # __ballot_sync over the whole warp: blocks of whole warps


def _ema_apply(half: bool) -> _Kernel:
    def run(gpu, ctx, x, ema, C, n, keep, fresh, words, limit):
        xs = gpu.device_array(x, (C, n), np.float16 if half else np.float32, ctx)
        avg = gpu.device_array(ema, (C, n), np.float32, ctx)
        count, force = gpu.device_array(words, (2,), np.uint32, ctx)
        if force or int(count) > limit:
            avg[...] = xs.astype(np.float32)
        else:
            avg *= np.float32(keep)
            avg += xs.astype(np.float32) * np.float32(fresh)

    return _Kernel(
        run,
        extent=lambda a: (a[3],),
        outputs=lambda a: [(a[1], (a[2], a[3]), np.float32, (1,))],
    )


_KERNELS = {
    "ema_reset_count": _Kernel(_ema_reset_count_run),
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
    "argmax_conf_f32": _conf_kernel(False, False),
    "argmax_conf_f16": _conf_kernel(True, False),
    "bilinear_argmax_conf_f32": _conf_kernel(False, True),
    "bilinear_argmax_conf_f16": _conf_kernel(True, True),
    "labels_from_i64": _labels_from(np.int64),
    "labels_from_i32": _labels_from(np.int32),
    "upsample_blend": _upsample_blend,
}
assert set(_KERNELS) == set(SIGNATURES), "every kernel the host launches has a fake"
