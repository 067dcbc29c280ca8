"""The stream's inference stage: frames from the sources' queues, in batches, through the model.

On CPU backends the stages split the Segmenter's per-frame steps: the capture thread runs
``prepare`` (preprocessing), the inference threads run only ``infer`` (each on its own
single-threaded ONNX Runtime session when there are several), and the output thread runs
``finish`` (post-processing). GPU pipelines keep the whole step together on the device
(``Segmenter.segment``).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.runtime import kernels
from edgeseg.runtime.smoothing import SmoothState
from edgeseg.streaming.config import StreamConfig
from edgeseg.streaming.frame import Frame, StreamResult
from edgeseg.streaming.queues import POLL, ResultQueue
from edgeseg.streaming.stats import StreamStats

if TYPE_CHECKING:
    from edgeseg.runtime.segmenter import Segmenter
    from edgeseg.streaming.capture import SourceRunner

log = logging.getLogger("edgeseg.stream")


@dataclass
class Shared:
    """What the stages of one run share: the model, the settings, the sources, the counters,
    the result queue, the stop flag, and each source's smoothing state."""

    seg: Segmenter
    cfg: StreamConfig
    stats: StreamStats
    stop: threading.Event
    split: bool  # CPU backends: pre / infer / post on different threads
    overlay: bool = False  # a sink draws: post-processing blends the overlay
    runners: list[SourceRunner] = field(default_factory=list)
    results: ResultQueue | None = None
    smoothing: list[SmoothState | None] = field(default_factory=list)
    failure: str | None = None
    arrival: threading.Condition = field(default_factory=threading.Condition)
    arrivals: int = 0

    @property
    def alpha(self) -> float | None:
        return self.cfg.alpha if self.overlay else None

    def fail(self, msg: str) -> None:
        """Stop the run because a stage cannot go on; the message goes to the report."""
        self.failure = msg
        self.stats.error(msg)
        log.error("%s", msg)
        self.stop.set()

    def notify(self) -> None:
        """A capture thread queued a frame: wake a waiting inference thread."""
        with self.arrival:
            self.arrivals += 1
            self.arrival.notify_all()

    def smooth_for(self, sid: int, frame: Frame) -> SmoothState | None:
        """The source's average, restarted for a new frame size or a reconnected feed."""
        state = self.smoothing[sid] if self.smoothing else None
        if state is not None:
            state.follow((frame.image.shape, frame.epoch))
        return state

    def single_threaded_kernels(self) -> None:
        """Called at the start of every stage thread: the stages already run in parallel, so a
        parallel region inside one would wait on cores busy with decoding, ONNX Runtime and
        encoding (an OpenMP setting is per thread)."""
        if kernels._cpu is not None:
            kernels._cpu.set_num_threads(self.cfg.kernel_threads)


class InferenceStage:
    """The inference threads of a run (see the module docstring)."""

    def __init__(self, shared: Shared, sources: int) -> None:
        self.sh = shared
        self.backends = self._worker_backends()
        self.batch = self._batch_size(sources)
        self._rotation = 0
        self._left = 0
        self.done = threading.Event()

    def _worker_backends(self) -> list:
        """The backend each inference thread uses: the Segmenter's own, or (for several
        workers) single-threaded ONNX Runtime sessions of the same file.

        ``infer_workers="auto"``: on an ONNX Runtime CPU model, one single-threaded session per
        two cores' worth of frames (2 on a 2-core machine): two frames in flight with one
        thread each cost fewer core-milliseconds a frame than one frame on two threads, which
        leaves more of the cores to decoding and encoding. Otherwise one."""
        seg, workers = self.sh.seg, self.sh.cfg.infer_workers
        b = seg.backend
        ort_cpu = self.sh.split and b.name == "ort" and b.device == "cpu"
        if workers == "auto":
            workers = 2 if ort_cpu and (os.cpu_count() or 1) >= 2 else 1
        if workers == 1 or not ort_cpu:
            return [b]
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        threads = max(1, (os.cpu_count() or 1) // workers)
        fuse = seg.upsample > 1
        return [
            OnnxRuntimeBackend(seg.model_path, "cpu", threads=threads, fuse_resize=fuse)
            for _ in range(workers)
        ]

    def _batch_size(self, sources: int) -> int:
        """``batch``, or by default one frame per source on GPU pipelines (one launch for all
        cameras) and one frame on CPU backends, where a batch costs more per frame than single
        frames on the two single-threaded sessions (benchmarks/stream_batch.py)."""
        batch = self.sh.cfg.batch
        if batch is None:
            batch = 1 if self.sh.split else sources
        top = self.sh.seg.max_batch
        if top is not None and batch > top:
            log.warning(
                "the model takes at most %d frames a batch; batching %d, not %d", top, top, batch
            )
            batch = top
        return batch

    # -- run
    def warmup(self) -> None:
        """One untimed frame (and one full batch) through every inference path before capture.

        First calls pay one-off costs: CUDA kernel module loading, cuDNN's algorithm choice and
        allocator growth on a GPU, ONNX Runtime's arena on a CPU. Left to the first real frame,
        they show up as a latency spike and, in realtime mode, as frames dropped before the
        stream has settled.
        """
        seg = self.sh.seg
        h, w = seg.spec.input_hw
        for n in sorted({1, self.batch}):
            if self.sh.split:  # only the model runs on the inference threads
                for backend in self.backends:
                    seg.infer(np.zeros((n, 3, h, w), np.float32), backend)
            else:
                seg.segment([np.zeros((h, w, 3), np.uint8)] * n, overlay_alpha=self.sh.alpha)

    def threads(self) -> list[threading.Thread]:
        self._left = len(self.backends)
        self.done.clear()
        return [
            threading.Thread(target=self._run, args=(b,), name=f"inference-{k}", daemon=True)
            for k, b in enumerate(self.backends)
        ]

    def _run(self, backend) -> None:
        self.sh.single_threaded_kernels()
        pending = list(range(len(self.sh.runners)))
        items: list = []
        try:
            while pending and not self.sh.stop.is_set():
                items = self._gather(pending)
                for sid, seq, out in self._segment(items, backend) if items else ():
                    if self.sh.results.put((seq, out), self.sh.stop, key=sid):
                        self.sh.stats.dropped(sid)
                items = []
        except Exception as e:  # out of memory, a broken model: the run stops, loudly
            for sid, _, _ in items:
                self.sh.stats.failed(sid, 1)
            self.sh.fail(f"inference failed: {type(e).__name__}: {e}")
        finally:
            with self.sh.arrival:
                self._left -= 1
                if self._left == 0:
                    self.done.set()

    def _gather(self, pending: list[int]) -> list[tuple[int, int, Frame]]:
        """Up to ``batch`` frames, taking each waiting source's next in turn; once a batch has a
        frame it waits at most ``batch_wait`` for the rest. ``pending`` loses the sources that
        have ended and are drained."""
        sh, items = self.sh, []
        deadline = None
        while pending and len(items) < self.batch and not sh.stop.is_set():
            with sh.arrival:
                seen = sh.arrivals
            self._rotation = (self._rotation + 1) % len(pending)
            for i in pending[self._rotation :] + pending[: self._rotation]:
                if len(items) >= self.batch:
                    break
                q = sh.runners[i].queue
                try:
                    items.append(q.get(timeout=0))
                except queue.Empty:
                    if sh.runners[i].done.is_set() and q.empty():
                        pending.remove(i)  # this source is finished and drained
            now = time.perf_counter()
            if len(items) >= self.batch or (deadline is not None and now >= deadline):
                break
            if items and deadline is None:
                deadline = now + sh.cfg.batch_wait / 1e3
            wait = POLL if deadline is None else max(0.0, deadline - now)
            with sh.arrival:
                sh.arrival.wait_for(lambda seen=seen: sh.arrivals != seen, timeout=wait)
        return items

    def _segment(self, items, backend) -> list[tuple[int, int, object]]:
        """One batched inference; ``(source, seq, result)`` per frame: a StreamResult on GPU
        pipelines, ``(source, frame, scores)`` for the output stage to finish on CPUs. Frames
        that failed to read are gaps (their number keeps the order)."""
        gaps = [(sid, seq, (sid, None, None)) for sid, seq, f in items if f is None]
        items = [it for it in items if it[2] is not None]
        if not items:
            return gaps
        frames = [f for _, _, f in items]
        if self.sh.split:  # CPU backends: only the model runs here
            t0 = time.perf_counter()
            x = frames[0].tensor if len(frames) == 1 else np.concatenate([f.tensor for f in frames])
            scores = self.sh.seg.infer(x, backend)
            ms = (time.perf_counter() - t0) * 1e3
            for f in frames:
                f.infer_ms, f.tensor = ms, None
            return gaps + [
                (sid, seq, (sid, f, scores[k : k + 1])) for k, (sid, seq, f) in enumerate(items)
            ]
        smooth = [self.sh.smooth_for(sid, f) for sid, _, f in items]
        results = self.sh.seg.segment(
            [f.image for f in frames], overlay_alpha=self.sh.alpha, smooth=smooth
        )
        return gaps + [
            (sid, seq, StreamResult.of(r, sid, f)) for r, (sid, seq, f) in zip(results, items)
        ]


def prepare_on_capture(shared: Shared):
    """The capture thread's share of a CPU run: the Segmenter's ``prepare`` step, one frame."""
    seg = shared.seg

    def prepare(frame: Frame) -> None:
        t0 = time.perf_counter()
        frame.tensor = seg.prepare([frame.image])
        frame.pre_ms = (time.perf_counter() - t0) * 1e3

    return prepare
