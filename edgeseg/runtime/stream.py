"""The stream pipeline: capture, inference and output on their own threads, joined by queues.

::

    capture (a thread a source) ──► queue ──► inference (pre, infer, post) ──► queue ──► output

Modes:
- ``realtime`` (default for cameras, URLs, GStreamer, synthetic): each queue holds only the
  newest item; an older one still waiting is dropped and counted. Latency stays bounded by one
  frame interval plus the processing time: the stream never falls behind.
- ``every-frame`` (default for files and folders): bounded blocking queues; capture waits for
  inference (back-pressure), nothing is lost, order is kept.

Every blocking call waits with a timeout and rechecks the stop flag, so ``stop()`` (Ctrl-C,
SIGTERM, a display's q key, ``--duration``) always ends the run with sinks closed cleanly.
Capture, ONNX Runtime and the C++ kernels release the GIL, so the stages overlap on all cores.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edgeseg.errors import EdgesegError
from edgeseg.runtime import kernels
from edgeseg.runtime.result import SegResult
from edgeseg.runtime.sinks import Sink
from edgeseg.runtime.sources import Frame, Source, open_source
from edgeseg.runtime.stats import StreamStats

if TYPE_CHECKING:
    from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger("edgeseg.stream")
MODES = ("realtime", "every-frame")
_POLL = 0.05  # seconds between stop-flag checks in blocking waits


@dataclass
class StreamResult(SegResult):
    """A SegResult with where it came from: source index and name, frame index, capture time."""

    index: int = 0
    source_id: int = 0
    source: str = ""
    t_capture: float = 0.0

    @classmethod
    def of(cls, r: SegResult, sid: int, frame: Frame) -> StreamResult:
        """``r`` stamped with the frame it came from."""
        return cls(
            labels=r.labels,
            spec=r.spec,
            frame=frame.image,
            timings_ms=r.timings_ms,
            vis=r.vis,
            vis_alpha=r.vis_alpha,
            index=frame.index,
            source_id=sid,
            source=frame.source,
            t_capture=frame.t_capture,
        )


class LatestSlot:
    """A one-item queue where ``put`` replaces what is waiting (True when it dropped one)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.item = None
        self.has = False

    def put(self, item, stop: threading.Event | None = None, key: int = 0) -> bool:
        with self.cond:
            dropped = self.has
            self.item, self.has = item, True
            self.cond.notify()
            return dropped

    def get(self, timeout: float):
        with self.cond:
            if not self.has and not self.cond.wait(timeout):
                raise queue.Empty
            if not self.has:
                raise queue.Empty
            item, self.item, self.has = self.item, None, False
            return item

    def empty(self) -> bool:
        with self.cond:
            return not self.has


class BlockingQueue:
    """A bounded FIFO whose ``put`` waits for room (back-pressure) but gives up when stopped."""

    def __init__(self, size: int) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=size)

    def put(self, item, stop: threading.Event | None = None, key: int = 0) -> bool:
        while True:
            try:
                self.q.put(item, timeout=_POLL)
                return False
            except queue.Full:
                if stop is not None and stop.is_set():
                    return False

    def get(self, timeout: float):
        return self.q.get(timeout=timeout)

    def empty(self) -> bool:
        return self.q.empty()


class LatestPerSource:
    """Realtime results: the newest waiting result of each source (``put`` replaces only that
    source's, returning True when it dropped one); ``get`` hands them out oldest first."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: dict[int, object] = {}  # insertion order: oldest first

    def put(self, item, stop: threading.Event | None = None, key: int = 0) -> bool:
        with self.cond:
            dropped = self.items.pop(key, None) is not None
            self.items[key] = item
            self.cond.notify()
            return dropped

    def get(self, timeout: float):
        with self.cond:
            if not self.items and not self.cond.wait(timeout):
                raise queue.Empty
            if not self.items:
                raise queue.Empty
            return self.items.pop(next(iter(self.items)))

    def empty(self) -> bool:
        with self.cond:
            return not self.items


def default_mode(sources: list[Source]) -> str:
    return "realtime" if any(s.live for s in sources) else "every-frame"


class StreamPipeline:
    """Run one model over one or more sources into sinks; ``run()`` returns the report dict.

    Args:
        segmenter: the :class:`~edgeseg.runtime.segmenter.Segmenter` shared by all sources.
        sources: source specs (see :mod:`edgeseg.runtime.sources`) or opened Source objects.
        sinks: where results go; a sink that raises is logged and skipped.
        mode: ``realtime`` | ``every-frame`` | None (from the sources).
        max_frames: stop each source after this many frames.
        duration: stop after this many seconds.
        reconnect: reopen a live source that stops delivering, with exponential back-off.
        alpha: overlay opacity, for sinks that draw.
        infer_workers: inference threads. ``auto``: on an ONNX Runtime CPU model, one
            single-threaded session per two cores' worth of frames (2 on a 2-core machine) —
            two frames in flight with one thread each cost fewer core-milliseconds per frame
            than one frame on two threads (intra-op parallelism of a small network is far
            from linear), which leaves more of the cores to decoding and encoding. Results are
            put back in capture order (every-frame) or never older than the last one shown
            (realtime). Otherwise 1.
        batch: frames of different sources inferred together (default: one per source on a GPU,
            1 on CPU backends; at most what the model takes); each result is routed back to its
            source, in order.
        batch_wait: the most a frame waits (seconds) for the others of its batch.
    """

    def __init__(
        self,
        segmenter: Segmenter,
        sources: list,
        *,
        sinks: list[Sink] | None = None,
        mode: str | None = None,
        max_frames: int | None = None,
        duration: float | None = None,
        reconnect: bool = False,
        alpha: float = 0.5,
        queue_size: int = 4,
        max_backoff_s: float = 8.0,
        kernel_threads: int = 1,
        infer_workers: int | str = "auto",
        batch: int | None = None,
        batch_wait: float = 0.01,
    ) -> None:
        if mode is not None and mode not in MODES:
            raise EdgesegError(f"unknown mode '{mode}'; choose realtime or every-frame")
        if max_frames is not None and max_frames < 1:
            raise EdgesegError("max_frames must be at least 1")
        if duration is not None and duration <= 0:
            raise EdgesegError("duration must be positive")
        if not 0.0 <= alpha <= 1.0:
            raise EdgesegError(f"alpha must be between 0 and 1, got {alpha}")
        self.seg = segmenter
        self.sources: list[Source] = []
        try:
            for s in sources:
                self.sources.append(s if isinstance(s, Source) else open_source(s, max_frames))
        except Exception:
            for s in self.sources:
                s.close()
            raise
        if not self.sources:
            raise EdgesegError(
                "no source given: a camera, file, folder, URL, pipeline or 'synthetic'"
            )
        self.sinks = list(sinks or [])
        self.mode = mode or default_mode(self.sources)
        self.max_frames, self.duration, self.reconnect = max_frames, duration, reconnect
        self.alpha = alpha
        self.max_backoff_s = max_backoff_s
        self.kernel_threads = kernel_threads
        # On CPU backends the three stages are pre (capture thread), infer, post (output thread);
        # GPU pipelines (torch-CUDA, TensorRT) keep pre/infer/post together on the device.
        self.split = self.seg.kernels in ("cpu", "reference")
        self.infer_backends = self._worker_backends(infer_workers)
        self.batch, self.batch_wait = self._batch_size(batch), batch_wait
        realtime = self.mode == "realtime"
        self.in_queues = [
            LatestSlot() if realtime else BlockingQueue(queue_size) for _ in self.sources
        ]
        self.out_queue = LatestPerSource() if realtime else BlockingQueue(queue_size * self.batch)
        self._arrival = threading.Condition()  # captures notify inference of new frames
        self._arrivals = 0
        self._rotation = 0
        self.stats = StreamStats()
        self.stop_event = threading.Event()
        self.errors: list[str] = []
        self._captures_done = [threading.Event() for _ in self.sources]
        self._workers_left = len(self.infer_backends)
        self._workers_lock = threading.Lock()
        self._inference_done = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- control
    def stop(self) -> None:
        """Ask every stage to finish; safe from any thread and from signal handlers."""
        self.stop_event.set()

    @property
    def overlay(self) -> bool:
        """Blend the overlay during post-processing only when a sink draws it."""
        return any(s.needs_overlay for s in self.sinks)

    @property
    def source_names(self) -> str:
        return ", ".join(s.name for s in self.sources)

    # -- stages
    def _capture(self, i: int) -> None:
        src, q = self.sources[i], self.in_queues[i]
        n = 0
        self._single_threaded_kernels()
        try:
            while not self.stop_event.is_set():
                if self.max_frames is not None and n >= self.max_frames:
                    break
                frame = src.read()
                if frame is None:
                    if src.live and self.reconnect and self._reopen(src):
                        continue
                    break
                n += 1
                self.stats.frame_in(frame.decode_ms)
                if self.split:  # the capture thread also preprocesses: one stage less on inference
                    t0 = time.perf_counter()
                    frame.tensor = kernels.preprocess(
                        frame.image,
                        self.seg.spec.input_hw,
                        self.seg.spec.input.mean,
                        self.seg.spec.input.std,
                    )
                    frame.pre_ms = (time.perf_counter() - t0) * 1e3
                if q.put((i, n - 1, frame), self.stop_event):
                    self.stats.dropped()
                with self._arrival:
                    self._arrivals += 1
                    self._arrival.notify_all()
        except Exception as e:  # a source error ends this source, not the run
            self._error(f"source {src.name}: {e}")
        finally:
            self._captures_done[i].set()

    def _reopen(self, src: Source) -> bool:
        delay = 0.25
        while not self.stop_event.is_set():
            log.warning("source %s stopped delivering; reconnecting in %.2g s", src.name, delay)
            if self.stop_event.wait(delay):
                return False
            try:
                if src.reopen():
                    self.stats.reconnects += 1
                    return True
            except Exception as e:
                log.warning("reconnecting %s failed: %s", src.name, e)
            delay = min(self.max_backoff_s, delay * 2)
        return False

    def _single_threaded_kernels(self) -> None:
        if kernels._cpu is not None:
            # The stages already run in parallel: a parallel region inside one would wait on
            # cores busy with decoding, ONNX Runtime and encoding. (Per-thread OpenMP setting.)
            kernels._cpu.set_num_threads(self.kernel_threads)

    def _worker_backends(self, workers: int | str) -> list:
        """The backend each inference thread uses: the Segmenter's own, or (for several
        workers) single-threaded ONNX Runtime sessions of the same file."""
        b = self.seg.backend
        ort_cpu = self.split and b.name == "ort" and b.device == "cpu"
        if workers == "auto":
            workers = 2 if ort_cpu and (os.cpu_count() or 1) >= 2 else 1
        if not isinstance(workers, int) or workers < 1:
            raise EdgesegError(
                f"infer_workers must be 'auto' or a positive integer, got {workers!r}"
            )
        if workers == 1 or not ort_cpu:
            return [b]
        from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        threads = max(1, (os.cpu_count() or 1) // workers)
        return [
            OnnxRuntimeBackend(
                self.seg.model_path, "cpu", threads=threads, fuse_resize=self.seg.upsample > 1
            )
            for _ in range(workers)
        ]  # warmed up by warmup() when the pipeline starts

    def _batch_size(self, batch: int | None) -> int:
        """``batch``, or by default one frame per source on GPU pipelines (one launch for all
        cameras) and one frame on CPU backends, where a batch costs more per frame than single
        frames on the two single-threaded sessions (benchmarks/stream_batch.py)."""
        if batch is None:
            batch = 1 if self.split else len(self.sources)
        if batch < 1:
            raise EdgesegError(f"batch must be at least 1, got {batch}")
        top = self.seg.max_batch
        if top is not None and batch > top:
            log.warning(
                "the model takes at most %d frames a batch; batching %d, not %d", top, top, batch
            )
            batch = top
        return batch

    def _gather(self, pending: list[int]) -> list[tuple[int, int, Frame]]:
        """Up to ``batch`` frames, taking each waiting source's next in turn; once a batch has a
        frame it waits at most ``batch_wait`` for the rest. ``pending`` loses the sources that
        have ended and are drained."""
        items: list[tuple[int, int, Frame]] = []
        deadline = None
        while pending and len(items) < self.batch and not self.stop_event.is_set():
            with self._arrival:
                seen = self._arrivals
            self._rotation = (self._rotation + 1) % len(pending)
            for i in pending[self._rotation :] + pending[: self._rotation]:
                if len(items) >= self.batch:
                    break
                try:
                    items.append(self.in_queues[i].get(timeout=0))
                except queue.Empty:
                    if self._captures_done[i].is_set() and self.in_queues[i].empty():
                        pending.remove(i)  # this source is finished and drained
            now = time.perf_counter()
            if len(items) >= self.batch or (deadline is not None and now >= deadline):
                break
            if items and deadline is None:
                deadline = now + self.batch_wait
            wait = _POLL if deadline is None else max(0.0, deadline - now)
            with self._arrival:
                self._arrival.wait_for(lambda seen=seen: self._arrivals != seen, timeout=wait)
        return items

    def _inference(self, backend) -> None:
        self._single_threaded_kernels()
        pending = list(range(len(self.sources)))
        try:
            while pending and not self.stop_event.is_set():
                items = self._gather(pending)
                for sid, seq, out in self._segment(items, backend) if items else ():
                    if self.out_queue.put((seq, out), self.stop_event, key=sid):
                        self.stats.dropped()
        except Exception as e:
            self._error(f"inference: {e}")
            self.stop()
        finally:
            with self._workers_lock:
                self._workers_left -= 1
                if self._workers_left == 0:
                    self._inference_done.set()

    def _segment(
        self, items: list[tuple[int, int, Frame]], backend
    ) -> list[tuple[int, int, object]]:
        """One batched inference; ``(source, seq, result)`` per frame: a StreamResult on GPU
        pipelines, ``(source, frame, scores)`` for the output stage to post-process on CPUs."""
        frames = [f for _, _, f in items]
        if self.split:  # CPU backends: only the model runs here; post-processing is the output's
            t0 = time.perf_counter()
            x = frames[0].tensor if len(frames) == 1 else np.concatenate([f.tensor for f in frames])
            scores = backend.infer(x)
            ms = (time.perf_counter() - t0) * 1e3
            for f in frames:
                f.infer_ms, f.tensor = ms, None
            return [
                (sid, seq, (sid, f, scores[k : k + 1])) for k, (sid, seq, f) in enumerate(items)
            ]
        alpha = self.alpha if self.overlay else None
        results = self.seg.segment([f.image for f in frames], overlay_alpha=alpha)
        return [(sid, seq, StreamResult.of(r, sid, f)) for r, (sid, seq, f) in zip(results, items)]

    def _postprocess(self, item) -> StreamResult:
        sid, frame, scores = item
        t0 = time.perf_counter()
        r = self.seg.postprocess(scores, frame.image, self.alpha if self.overlay else None)
        r.timings_ms = {
            "pre": frame.pre_ms,
            "infer": frame.infer_ms,
            "post": (time.perf_counter() - t0) * 1e3,
        }
        return StreamResult.of(r, sid, frame)

    def _in_order(self) -> Iterator:
        """Inference results in capture order per source. every-frame: a result waits until
        its predecessors are out (several workers finish out of order). realtime: a result
        older than one already shown is dropped (and counted)."""
        every = self.mode == "every-frame"
        next_seq = [0] * len(self.sources)
        held: list[dict[int, object]] = [{} for _ in self.sources]
        while True:
            try:
                seq, item = self.out_queue.get(timeout=_POLL)
            except queue.Empty:
                if self._inference_done.is_set() and self.out_queue.empty():
                    break
                continue
            sid = item[0] if isinstance(item, tuple) else item.source_id
            if not every:
                if seq < next_seq[sid]:
                    self.stats.dropped()
                    continue
                next_seq[sid] = seq + 1
                yield item
                continue
            held[sid][seq] = item
            while next_seq[sid] in held[sid]:
                yield held[sid].pop(next_seq[sid])
                next_seq[sid] += 1
        for h in held:  # a stopped run: what is left, still in order
            for seq in sorted(h):
                yield h[seq]

    def _output(self) -> None:
        self._single_threaded_kernels()
        broken: set[int] = set()
        for res in self._in_order():
            if isinstance(res, tuple):
                res = self._postprocess(res)
            t0 = time.perf_counter()
            for k, sink in enumerate(self.sinks):
                if k in broken:
                    continue
                try:
                    sink.write(res)
                except Exception as e:
                    self.stats.sink_errors += 1
                    log.error("sink %s failed on frame %d: %s", sink.name, res.index, e)
                    if self.stats.sink_errors > 20 and k not in broken:
                        broken.add(k)  # failing every frame: stop trying, keep the stream going
                        log.error("sink %s disabled after repeated failures", sink.name)
                if sink.wants_stop:
                    self.stop()
            res.timings_ms["sink"] = (time.perf_counter() - t0) * 1e3
            self.stats.frame_out(res.t_capture, res.timings_ms)

    def _error(self, msg: str) -> None:
        self.errors.append(msg)
        log.error("%s", msg)

    # -- run
    def warmup(self) -> None:
        """One untimed frame through every inference path before capture starts.

        First calls pay one-off costs: CUDA kernel module loading, cuDNN's algorithm choice and
        allocator growth on a GPU, ONNX Runtime's arena on a CPU. Left to the first real frame,
        they show up as a latency spike and, in realtime mode, as frames dropped before the
        stream has settled.
        """
        h, w = self.seg.spec.input_hw
        for n in sorted({1, self.batch}):  # a lone frame, and a full batch
            if self.split:  # only the model runs on the inference threads
                for backend in self.infer_backends:
                    backend.infer(np.zeros((n, 3, h, w), np.float32))
            else:
                frames = [np.zeros((h, w, 3), np.uint8)] * n
                self.seg.segment(frames, overlay_alpha=self.alpha if self.overlay else None)

    def start(self) -> None:
        try:
            self.warmup()
        except Exception:  # e.g. CUDA out of memory: release the sources, finalise the sinks
            self.close()
            raise
        names = [f"capture-{i}" for i in range(len(self.sources))]
        self._threads = [
            threading.Thread(target=self._capture, args=(i,), name=n, daemon=True)
            for i, n in enumerate(names)
        ]
        self._threads += [
            threading.Thread(target=self._inference, args=(b,), name=f"inference-{k}", daemon=True)
            for k, b in enumerate(self.infer_backends)
        ]
        self._threads.append(threading.Thread(target=self._output, name="output", daemon=True))
        self.stats = StreamStats()
        for t in self._threads:
            t.start()

    def join(
        self, on_status: Callable[[StreamStats], None] | None = None, status_every: float = 1.0
    ) -> dict:
        """Wait for the end (sources exhausted, duration, stop()); close all; return the report."""
        t_end = time.perf_counter() + self.duration if self.duration else None
        next_status = time.perf_counter() + status_every
        try:
            while any(t.is_alive() for t in self._threads):
                for t in self._threads:
                    t.join(timeout=_POLL)
                now = time.perf_counter()
                if t_end is not None and now >= t_end:
                    self.stop()
                if on_status is not None and now >= next_status:
                    on_status(self.stats)
                    next_status = now + status_every
        finally:
            self.stop()
            for t in self._threads:
                t.join(timeout=5.0)
            self.close()
        return self.report()

    def run(
        self, on_status: Callable[[StreamStats], None] | None = None, status_every: float = 1.0
    ) -> dict:
        self.start()
        return self.join(on_status, status_every)

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:
                self._error(f"closing {sink.name}: {e}")
        for s in self.sources:
            s.close()

    def report(self) -> dict:
        b = self.seg.backend
        return self.stats.report(
            self.source_names,
            self.seg.model_path,
            f"{b.name} ({b.device}, {self.seg.kernels} kernels)",
        )


class _QueueSink(Sink):
    """Hands every result to Segmenter.stream's iterator (the pipeline's mode decides drops)."""

    def __init__(self, q: queue.Queue, overlay: bool) -> None:
        self.q, self.needs_overlay, self.name = q, overlay, "iterator"

    def write(self, result) -> None:
        self.q.put(result)


def stream(
    segmenter: Segmenter,
    source,
    mode: str | None = None,
    max_frames: int | None = None,
    duration: float | None = None,
    overlay_alpha: float | None = None,
    reconnect: bool = False,
    sinks: list[Sink] | None = None,
) -> Iterator[StreamResult]:
    """Iterate over a source's results through the threaded pipeline (see Segmenter.stream)."""
    q: queue.Queue = queue.Queue(maxsize=8)
    sink = _QueueSink(q, overlay_alpha is not None)
    pipe = StreamPipeline(
        segmenter,
        source if isinstance(source, list) else [source],
        sinks=[sink, *(sinks or [])],
        mode=mode,
        max_frames=max_frames,
        duration=duration,
        reconnect=reconnect,
        alpha=overlay_alpha if overlay_alpha is not None else 0.5,
    )
    done = threading.Event()
    report: dict = {}
    failed: list[BaseException] = []

    def run() -> None:
        try:
            report.update(pipe.run())
        except BaseException as e:  # raised again in the caller's thread, not lost with this one
            failed.append(e)
        finally:
            done.set()

    threading.Thread(target=run, name="stream", daemon=True).start()
    try:
        while not (done.is_set() and q.empty()):
            try:
                yield q.get(timeout=_POLL)
            except queue.Empty:
                continue
        if failed:
            raise failed[0]
    finally:
        pipe.stop()
        while not done.is_set():  # unblock the output stage if it waits on a full iterator queue
            try:
                q.get(timeout=_POLL)
            except queue.Empty:
                pass


__all__ = ["MODES", "StreamPipeline", "StreamResult", "default_mode", "stream"]
