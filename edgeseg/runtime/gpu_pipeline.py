"""The GPU frame pipeline, one implementation for every GPU backend (PyTorch, ONNX Runtime,
TensorRT):

::

    uint8 frames ─► page-locked buffers ─► device (async) ─► preprocess kernel ─► backend on
    device buffers ─► postprocess kernel (fused upsample, argmax, nearest, overlay) ─► uint8
    labels (and overlays, and per-pixel confidence when asked for) ─► host

One CUDA stream per pipeline (the backend's own when it is tied to one: ONNX Runtime's compute
stream), the context made current on whichever thread calls, several frames (one per camera)
batched into one inference. With ``cuda_graph=True`` the whole step — uploads, preprocessing,
the model, post-processing, downloads — is captured once per batch shape and replayed as a
single launch (recaptured when a frame size changes). Everything is released by :meth:`close`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeseg.device import cuda_index
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends.base import Backend, DeviceIO
from edgeseg.runtime.cuda_driver import CudaError, DeviceBuffer, Driver, get_driver
from edgeseg.runtime.kernels.cuda import ColourTables, CudaKernels, scratch_bytes
from edgeseg.runtime.smoothing import SmoothState
from edgeseg.spec import ModelSpec

MAX_GRAPHS = 8  # captured steps kept (each holds device memory); the least recently used goes

KINDS = {
    np.dtype(np.float32): "f32",
    np.dtype(np.float16): "f16",
    np.dtype(np.uint8): "u8",
    np.dtype(np.int32): "i32",
    np.dtype(np.int64): "i64",
}


class _Slot:
    """The buffers of one frame of a batch at one frame size: page-locked host and device."""

    def __init__(self, drv: Driver, hw: tuple[int, int], confidence: bool = False) -> None:
        H, W = hw
        self.hw = hw
        self.h_frame = drv.pinned_empty((H, W, 3), np.uint8)
        self.h_labels = drv.pinned_empty((H, W), np.uint8)
        self.h_vis = drv.pinned_empty((H, W, 3), np.uint8)
        self.device: list[DeviceBuffer] = [
            drv.mem_alloc(H * W * 3),
            drv.mem_alloc(H * W),
            drv.mem_alloc(H * W * 3),
        ]
        self.d_frame, self.d_labels, self.d_vis = (b.ptr for b in self.device)
        self.h_conf, self.d_conf = None, 0
        if confidence:
            self.h_conf = drv.pinned_empty((H, W), np.uint8)
            self.device.append(drv.mem_alloc(H * W))
            self.d_conf = self.device[-1].ptr

    def free(self) -> None:
        for b in self.device:
            b.free()


class _Scratch:
    """Each frame's scratch at model size, kept across steps: its ``labels`` (at the fused
    upsample's size) and, with confidence, its ``conf`` (on the scores' own grid)."""

    def __init__(self, drv: Driver, upsample: int) -> None:
        self.drv, self.upsample = drv, upsample
        self.buffers: dict[tuple[str, int], DeviceBuffer] = {}

    def ptr(self, i: int, model_hw: tuple[int, int], what: str = "labels") -> int:
        if (what, i) not in self.buffers:
            k = self.upsample if what == "labels" else 1
            self.buffers[(what, i)] = self.drv.mem_alloc(scratch_bytes(model_hw, k))
        return self.buffers[(what, i)].ptr

    def free(self) -> None:
        for buf in self.buffers.values():
            buf.free()
        self.buffers.clear()


@dataclass
class _Step:
    """What one enqueue of a batch needs."""

    io: DeviceIO
    slots: list[_Slot]
    scratch: list[int]
    table: tuple[int, int]  # colour table pointer, keep_q (0, 0 without an overlay)
    overlay: bool
    smooth: list[SmoothState | None]


class _Graphs:
    """Captured steps, by what they bake in (buffer addresses, kernel scalars): a step is
    captured the second time it runs eagerly (lazy initialisations done) and replayed after;
    at most MAX_GRAPHS are kept, the least recently used destroyed first."""

    def __init__(self, kind: str | None, drv: Driver, backend: Backend) -> None:
        self.kind, self.drv, self.backend = kind, drv, backend
        self.kept: OrderedDict[tuple, Any] = OrderedDict()
        self.ran_eagerly: set[tuple] = set()

    def get(self, key: tuple) -> Any | None:
        if key not in self.kept:
            return None
        self.kept.move_to_end(key)
        return self.kept[key]

    def ran(self, key: tuple, capture) -> None:
        """``key`` just ran eagerly; ``capture()`` makes its graph once it is warm."""
        if self.kind is None:
            return
        if key in self.ran_eagerly:
            self.kept[key] = capture()
            while len(self.kept) > MAX_GRAPHS:
                self.destroy(self.kept.popitem(last=False)[1])
        if len(self.ran_eagerly) > 8 * MAX_GRAPHS:  # keys only, but never without bound
            self.ran_eagerly.clear()
        self.ran_eagerly.add(key)

    def capture(self, stream: Any, enqueue) -> Any:
        if self.kind == "torch":
            return self.backend.capture(stream, enqueue)
        return self.drv.graph_capture(stream, enqueue)

    def replay(self, graph: Any, stream: Any) -> None:
        if self.kind == "torch":
            self.backend.replay(graph, stream)
        else:
            self.drv.graph_launch(graph, stream)

    def destroy(self, graph: Any) -> None:
        """Release a captured step (a torch graph's memory pool goes with its last reference)."""
        if self.kind == "driver":
            self.drv.graph_destroy(graph)

    def drop(self) -> None:
        """Every graph goes (buffers they point at are being replaced)."""
        for graph in self.kept.values():
            self.destroy(graph)
        self.kept.clear()
        self.ran_eagerly.clear()


class GpuPipeline:
    """Runs ``backend`` (with ``caps.device_buffers``) on frames; see the module docstring.
    ``confidence``: each result also carries the per-pixel confidence, computed by the same
    CUDA kernels as the CPU's, byte for byte (docs/kernels.md); without it none is computed."""

    def __init__(
        self,
        backend: Backend,
        mode: str = "nearest",
        cuda_graph: bool = False,
        driver: Driver | None = None,
        confidence: bool = False,
    ) -> None:
        self.backend, self.spec, self.mode = backend, backend.spec, mode
        self.confidence = confidence
        self.drv = driver or get_driver(cuda_index(backend.device))
        try:
            self.drv.load_kernels()  # module loading is not allowed inside a graph capture
        except CudaError as e:  # NVRTC or the module loader refused: the caller falls back
            first = str(e).splitlines()[0]
            raise EdgesegError(
                f"the CUDA kernels could not be built for {self.drv.arch}: {first}"
            ) from None
        except RuntimeError as e:
            raise EdgesegError(f"the CUDA kernels could not be loaded ({e})") from None
        self.kernels, self.tables = CudaKernels(self.drv), ColourTables(self.drv)
        own = backend.device_stream()
        self.stream = own if own is not None else self.drv.stream_create()
        self._own_stream = own is None
        self.events = [self.drv.event_create() for _ in range(4)]
        self.graph_kind = backend.caps.graph if cuda_graph else None
        self.graphs = _Graphs(self.graph_kind, self.drv, backend)
        self._slots: dict[tuple[int, tuple[int, int]], _Slot] = {}
        self._scratch = _Scratch(self.drv, backend.upsample)
        self._smooth: dict[int, SmoothState] = {}  # states holding device buffers of this pipeline

    # -- buffers
    def _slot(self, i: int, hw: tuple[int, int]) -> _Slot:
        if (i, hw) not in self._slots:
            old = [k for k in self._slots if k[0] == i]  # a frame size change: the old buffers go
            for k in old:
                self._slots.pop(k).free()
                self.graphs.drop()
            self._slots[(i, hw)] = _Slot(self.drv, hw, self.confidence)
        return self._slots[(i, hw)]

    def _smooth_buffers(self, state: SmoothState, io: DeviceIO) -> dict:
        """``state``'s device buffers (see :func:`smooth_buffers`), tracked for close()."""
        if smooth_buffers(self.drv, state, tuple(io.output_shape[1:])):
            self._smooth[id(state)] = state
            self.graphs.drop()  # captured graphs point at the old buffers
        return state.device

    # -- one step
    def _enqueue(self, step: _Step, timed: bool) -> None:
        """Uploads, preprocessing, the model, post-processing and downloads, on the stream."""
        drv, s, e, io = self.drv, self.stream, self.events, step.io
        in_item = int(np.prod(io_in_shape(self.spec))) * io.input_dtype.itemsize
        for i, slot in enumerate(step.slots):
            drv.memcpy_htod(slot.d_frame, slot.h_frame, s)
            self.kernels.preprocess(
                slot.d_frame,
                slot.hw,
                slot.hw[1] * 3,
                io.input + i * in_item,
                self.spec.input_hw,
                self.spec.input.mean,
                self.spec.input.std,
                io.input_dtype == np.float16,
                s,
            )
        if timed:
            drv.event_record(e[1], s)
        out = self.backend.run_device(io, s)
        if timed:
            drv.event_record(e[2], s)
        self._postprocess(step, out)

    def _postprocess(self, step: _Step, out: int) -> None:
        io, s = step.io, self.stream
        kind = KINDS[io.output_dtype]
        classes = io.output_shape[1] if len(io.output_shape) == 4 else 1
        model_hw = tuple(io.output_shape[-2:])
        out_item = int(np.prod(io.output_shape[1:])) * io.output_dtype.itemsize
        table, keep_q = step.table
        for i, slot in enumerate(step.slots):
            W = slot.hw[1]
            scores, skind = out + i * out_item, kind
            state = step.smooth[i]
            if state is not None:  # the stream's moving average, then its labels
                dev = state.device
                self.drv.memcpy_htod(dev["words"].ptr + 4, dev["force"], s)
                self.kernels.smooth(
                    scores,
                    kind,
                    classes,
                    model_hw,
                    dev["ema"].ptr,
                    dev["words"].ptr,
                    state.keep,
                    state.cut,
                    s,
                )
                scores, skind = dev["ema"].ptr, "f32"
            blend = (
                (slot.d_frame, W * 3, slot.d_vis, table, keep_q)
                if step.overlay
                else (0, 0, 0, 0, 0)
            )
            self.kernels.postprocess(
                scores,
                skind,
                classes,
                model_hw,
                slot.d_labels,
                slot.hw,
                step.scratch[i],
                self.mode,
                *blend,
                stream=s,
                upsample=self.backend.upsample,
                conf=slot.d_conf,
                small_conf=self._scratch.ptr(i, model_hw, "conf") if slot.d_conf else 0,
            )
            self.drv.memcpy_dtoh(slot.h_labels, slot.d_labels, s)
            if slot.d_conf:
                self.drv.memcpy_dtoh(slot.h_conf, slot.d_conf, s)
            if step.overlay:
                self.drv.memcpy_dtoh(slot.h_vis, slot.d_vis, s)

    def run(
        self,
        frames: list[np.ndarray],
        overlay_alpha: float | None = None,
        smooth: list[SmoothState | None] | None = None,
    ) -> tuple[list[tuple[np.ndarray, np.ndarray | None, np.ndarray | None]], dict[str, float]]:
        """Segment a batch of BGR uint8 frames (any sizes); ``[(labels, overlay or None,
        confidence or None)]`` and
        the step's timings in ms (``pre``/``infer``/``post`` from CUDA events; a graph replay
        is one launch, reported whole as ``infer``). ``smooth``: a stream's moving average per
        frame, or None (see :mod:`edgeseg.runtime.smoothing`)."""
        t0 = time.perf_counter()
        self.drv.ensure_current()  # once a step: PyTorch may have switched GPUs on this thread
        io = self.backend.device_io(len(frames))
        # (the Segmenter has checked that a smoothed model outputs class scores)
        smooth = list(smooth) if smooth is not None else [None] * len(frames)
        for state in smooth:
            if state is not None:
                # read by the step's upload (also on a graph replay): restart, or blend in
                self._smooth_buffers(state, io)["force"][0] = int(state.restart)
                state.restart = False
        slots = [self._slot(i, f.shape[:2]) for i, f in enumerate(frames)]
        overlay = overlay_alpha is not None
        table = (
            self.tables.get(self.spec.palette, overlay_alpha, self.stream) if overlay else (0, 0)
        )
        step = _Step(
            io,
            slots,
            [self._scratch.ptr(i, io.output_shape[-2:]) for i in range(len(frames))],
            table,
            overlay,
            smooth,
        )
        for slot, frame in zip(slots, frames):
            slot.h_frame[...] = frame
        averages = tuple(
            None if st is None else (st.device["ema"].ptr, st.keep, st.cut) for st in smooth
        )
        # What a captured step bakes in: buffer addresses (the colour table's among them: a
        # table evicted and replaced lives elsewhere) and kernel scalars.
        key = (len(frames), tuple(s.hw for s in slots), table, averages)
        timings = self._launch(step, key)
        results = [
            (s.h_labels.copy(), s.h_vis.copy() if overlay else None, _copy(s.h_conf)) for s in slots
        ]
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return results, timings

    def _launch(self, step: _Step, key: tuple) -> dict[str, float]:
        drv, e, s = self.drv, self.events, self.stream
        drv.event_record(e[0], s)
        graph = self.graphs.get(key)
        if graph is not None:
            self.graphs.replay(graph, s)
            drv.event_record(e[3], s)
            drv.stream_synchronize(s)
            return {
                "pre": 0.0,
                "infer": drv.event_elapsed_ms(e[0], e[3]),
                "post": 0.0,
                "graph": 1.0,
            }
        self._enqueue(step, timed=True)
        drv.event_record(e[3], s)
        drv.stream_synchronize(s)
        timings = {
            "pre": drv.event_elapsed_ms(e[0], e[1]),
            "infer": drv.event_elapsed_ms(e[1], e[2]),
            "post": drv.event_elapsed_ms(e[2], e[3]),
        }
        self.graphs.ran(key, lambda: self.graphs.capture(s, lambda: self._enqueue(step, False)))
        return timings

    def time_model(self, warmup: int, iters: int) -> list[float]:
        """Wall-clock ms of the model alone on device-resident input (batch 1; replayed as a
        CUDA graph when the pipeline uses graphs), each ending in a synchronise: what
        ``edgeseg bench`` reports as model-only for a GPU backend."""
        self.drv.make_current()
        io, s = self.backend.device_io(1), self.stream
        run = lambda: self.backend.run_device(io, s)  # noqa: E731
        graph = None
        for _ in range(max(2, warmup)):
            run()
            self.drv.stream_synchronize(s)
        if self.graph_kind is not None:
            graph = self.graphs.capture(s, run)
        samples = []
        try:
            for _ in range(iters):
                t = time.perf_counter()
                self.graphs.replay(graph, s) if graph is not None else run()
                self.drv.stream_synchronize(s)
                samples.append((time.perf_counter() - t) * 1e3)
        finally:
            if graph is not None:
                self.graphs.destroy(graph)
        return samples

    def close(self) -> None:
        """Free every buffer, graph, event and the pipeline's own stream."""
        self.drv.make_current()
        self.graphs.drop()
        for slot in self._slots.values():
            slot.free()
        self._slots.clear()
        self._scratch.free()
        for state in self._smooth.values():
            free_smooth(state)
        self._smooth.clear()
        self.tables.free()
        for ev in self.events:
            self.drv.event_destroy(ev)
        self.events = []
        if self._own_stream:
            self.drv.stream_destroy(self.stream)


def _copy(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else a.copy()


def smooth_buffers(drv: Driver, state: SmoothState, shape: tuple[int, ...]) -> bool:
    """Give ``state`` its device average (float32, one frame's logits of ``shape``) and words,
    on its first frame and again when the logits change shape (a restart); True when new."""
    dev = state.device
    if dev.get("shape") == shape:
        return False
    free_smooth(state)
    dev.update(
        shape=shape,
        ema=drv.mem_alloc(int(np.prod(shape)) * 4),
        words=drv.mem_alloc(8),
        force=drv.pinned_empty((1,), np.uint32),
    )
    state.restart = True
    return True


def free_smooth(state: SmoothState) -> None:
    for name in ("ema", "words"):
        if name in state.device:
            state.device.pop(name).free()
    state.device.clear()


def io_in_shape(spec: ModelSpec) -> tuple[int, int, int]:
    """One frame's model input: (3, h, w)."""
    return (3, *spec.input_hw)
