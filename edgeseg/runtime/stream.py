"""The stream pipeline: capture, inference and output on their own threads, joined by queues.

::

    capture (a thread a source) ──► queue ──► inference (batches) ──► queue ──► output (sinks)

Modes, per source (``mode`` sets all of them; by default from each source):

- ``realtime`` (cameras, URLs, GStreamer, synthetic): each queue holds only the newest item;
  an older one still waiting is dropped and counted. Latency stays bounded by one frame interval
  plus the processing time: the stream never falls behind.
- ``every-frame`` (files and folders): bounded blocking queues; capture waits for inference
  (back-pressure), nothing is lost, order is kept.

A run never hangs and never hides a failure: every blocking wait has a timeout and rechecks the
stop flag; a watchdog reopens (or fails) a source stuck in its read; an error in inference or in
the output stage stops the run; a sink that keeps failing is disabled. ``exit_code`` and the
report say what happened (docs/operations.md). Every frame read is counted exactly once as out,
dropped or failed.
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

from edgeseg._redact import redact
from edgeseg.errors import EdgesegError
from edgeseg.runtime import kernels
from edgeseg.runtime.capture import SourceRunner, is_live, open_within
from edgeseg.runtime.queues import POLL, BlockingQueue, LatestSlot, ResultQueue
from edgeseg.runtime.result import SegResult
from edgeseg.runtime.sinks import Sink, SinkFailed
from edgeseg.runtime.smoothing import DEFAULT_CUT, SmoothState, check_smoothing
from edgeseg.runtime.sources import Frame, Source
from edgeseg.runtime.stats import StreamStats

if TYPE_CHECKING:
    from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger("edgeseg.stream")
MODES = ("realtime", "every-frame")
# Exit codes of a run (docs/operations.md); the first that applies wins.
EXIT_OK, EXIT_INFERENCE, EXIT_SOURCE, EXIT_SINK = 0, 4, 3, 5


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


def default_mode(source: Source | None, spec: str) -> str:
    live = source.live if source is not None else is_live(spec)
    return "realtime" if live else "every-frame"


class StreamPipeline:
    """Run one model over one or more sources into sinks; ``run()`` returns the report dict.

    Args:
        segmenter: the :class:`~edgeseg.runtime.segmenter.Segmenter` shared by all sources.
        sources: source specs (see :mod:`edgeseg.runtime.sources`) or opened Source objects.
        sinks: where results go. A sink that raises is logged and skipped; after
            ``max_sink_errors`` failures in a row (or one :class:`SinkFailed`) it is disabled.
        mode: ``realtime`` | ``every-frame`` for every source, or None (each source's own).
        max_frames: stop each source after this many frames.
        duration: stop after this many seconds.
        reconnect: reopen a live source that stops delivering, stalls, or is not up yet at the
            start, with exponential back-off (``backoff``: first and longest delay, seconds;
            the longest is short so a camera that returns streams again within a second).
        rtsp_transport: ``tcp`` or ``udp`` for ``rtsp://`` sources.
        stall_timeout: seconds a live source may spend in one read (or open) before it is
            treated as dead (0: never); default 5 for live sources.
        alpha: overlay opacity, for sinks that draw.
        infer_workers: inference threads. ``auto``: on an ONNX Runtime CPU model, one
            single-threaded session per two cores' worth of frames (2 on a 2-core machine) —
            two frames in flight with one thread each cost fewer core-milliseconds per frame
            than one frame on two threads, which leaves more of the cores to decoding and
            encoding. Results are put back in capture order (every-frame) or never older than
            the last one shown (realtime). Otherwise 1.
        batch: frames of different sources inferred together (default: one per source on a GPU,
            1 on CPU backends; at most what the model takes); each result is routed back to its
            source, in order.
        batch_wait: the most a frame waits (seconds) for the others of its batch.
        stop_timeout: seconds ``join`` waits for the threads after a stop before giving up on
            them (a read that never returns) and reporting.
        open_timeout: seconds a source's first open may take before it counts as failed.
        smooth: temporal smoothing, the weight of the past in each source's moving average of
            class scores (0: off, labels exactly those of each frame; see
            :mod:`edgeseg.runtime.smoothing`); ``smooth_cut``: the fraction of pixels changing
            class at once that counts as a scene cut and restarts the average.
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
        backoff: tuple[float, float] = (0.25, 0.5),
        rtsp_transport: str = "tcp",
        stall_timeout: float | None = None,
        kernel_threads: int = 1,
        infer_workers: int | str = "auto",
        batch: int | None = None,
        batch_wait: float = 0.01,
        max_sink_errors: int = 25,
        stop_timeout: float = 5.0,
        open_timeout: float = 15.0,
        smooth: float = 0.0,
        smooth_cut: float = DEFAULT_CUT,
    ) -> None:
        _check_settings(mode, max_frames, duration, alpha)
        check_smoothing(smooth, smooth_cut)
        self.seg = segmenter
        self.sinks = list(sinks or [])
        self.max_frames, self.duration, self.reconnect = max_frames, duration, reconnect
        self.alpha, self.kernel_threads = alpha, kernel_threads
        self.max_sink_errors, self.stop_timeout = max_sink_errors, stop_timeout
        self.open_timeout = open_timeout
        self.open_options = {"rtsp_transport": rtsp_transport}
        self.stop_event = threading.Event()
        self.stats = StreamStats()
        self._arrival = threading.Condition()  # captures tell inference of new frames
        self._arrivals = 0
        self._rotation = 0
        self._threads: list[threading.Thread] = []
        self.runners: list[SourceRunner] = []
        try:
            opened = self._open_sources(sources)
            if not opened:
                raise EdgesegError(
                    "no source given: a camera, file, folder, URL, pipeline or 'synthetic'"
                )
            self.modes = [mode or default_mode(src, spec) for spec, src in opened]
            # On CPU backends the stages are pre (capture thread), infer, post (output thread);
            # GPU pipelines keep pre/infer/post together on the device.
            self.split = self.seg.kernels in ("cpu", "reference")
            self.infer_backends = self._worker_backends(infer_workers)
            self.batch, self.batch_wait = self._batch_size(batch, len(opened)), batch_wait
            self.out_queue = ResultQueue(self.modes, queue_size * self.batch)
            self._make_runners(opened, queue_size, backoff, stall_timeout)
            self.smoothing = self._smoothing(smooth, smooth_cut)
        except BaseException:
            self._close_opened(sources)
            raise

    # -- construction
    def _open_sources(self, sources: list) -> list[tuple[str, Source | None]]:
        """(spec, opened source or None) each; with ``reconnect`` a live source that cannot be
        opened yet is retried by its thread instead of failing the start."""
        self._opened: list[Source] = []
        out = []
        for s in sources:
            if isinstance(s, Source):
                self._opened.append(s)
                out.append((s.spec, s))
                continue
            try:
                src = open_within(s, self.max_frames, self.open_timeout, **self.open_options)
            except EdgesegError as e:
                if not (self.reconnect and is_live(str(s))):
                    raise
                log.warning("%s; retrying until it is up (reconnect)", e)
                src = None
            if src is not None:
                self._opened.append(src)
            out.append((str(s), src))
        return out

    def _close_opened(self, sources: list) -> None:
        for src in getattr(self, "_opened", []):
            src.close()

    def _make_runners(self, opened, queue_size: int, backoff, stall_timeout: float | None) -> None:
        names = [src.name if src is not None else redact(spec) for spec, src in opened]
        self.stats.reset(names, self.modes)
        prepare = self._preprocess if self.split else None
        for sid, ((spec, src), mode) in enumerate(zip(opened, self.modes)):
            q = LatestSlot() if mode == "realtime" else BlockingQueue(queue_size)
            live = src.live if src is not None else is_live(spec)
            stall = (5.0 if live else 0.0) if stall_timeout is None else stall_timeout
            self.runners.append(
                SourceRunner(
                    sid,
                    spec,
                    src,
                    stats=self.stats,
                    queue=q,
                    stop=self.stop_event,
                    max_frames=self.max_frames,
                    reconnect=self.reconnect,
                    stall_timeout=stall,
                    backoff=backoff,
                    open_options=self.open_options,
                    prepare=prepare,
                    on_frame=self._notify,
                    on_start=self._single_threaded_kernels,
                )
            )

    def _smoothing(self, keep: float, cut: float) -> list[SmoothState | None]:
        """A moving average per source (``smooth`` > 0), else none."""
        if keep == 0:
            return [None] * len(self.runners)
        if self.seg.spec.output.kind != "logits":
            raise EdgesegError(
                f"--smooth needs a model that outputs class scores; {self.seg.model_path} "
                "outputs labels (an argmax model): use the model.onnx exported beside it"
            )
        return [SmoothState(keep, cut) for _ in self.runners]

    def _smooth_for(self, sid: int, frame: Frame) -> SmoothState | None:
        """The source's average, restarted for a new frame size or a reconnected feed."""
        state = self.smoothing[sid]
        if state is not None:
            state.follow((frame.image.shape, frame.epoch))
        return state

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
        fuse = self.seg.upsample > 1
        return [
            OnnxRuntimeBackend(self.seg.model_path, "cpu", threads=threads, fuse_resize=fuse)
            for _ in range(workers)
        ]

    def _batch_size(self, batch: int | None, sources: int) -> int:
        """``batch``, or by default one frame per source on GPU pipelines (one launch for all
        cameras) and one frame on CPU backends, where a batch costs more per frame than single
        frames on the two single-threaded sessions (benchmarks/stream_batch.py)."""
        if batch is None:
            batch = 1 if self.split else sources
        if batch < 1:
            raise EdgesegError(f"batch must be at least 1, got {batch}")
        top = self.seg.max_batch
        if top is not None and batch > top:
            log.warning(
                "the model takes at most %d frames a batch; batching %d, not %d", top, top, batch
            )
            batch = top
        return batch

    # -- control
    def stop(self) -> None:
        """Ask every stage to finish; safe from any thread and from signal handlers."""
        self.stop_event.set()

    @property
    def sources(self) -> list[Source | None]:
        return [r.source for r in self.runners]

    @property
    def mode(self) -> str:
        """The sources' mode, or ``mixed``."""
        return self.modes[0] if len(set(self.modes)) == 1 else "mixed"

    @property
    def overlay(self) -> bool:
        """Blend the overlay during post-processing only when a sink draws it."""
        return any(s.needs_overlay for s in self.sinks)

    @property
    def source_names(self) -> str:
        return ", ".join(r.name for r in self.runners)

    # -- stages
    def _preprocess(self, frame: Frame) -> None:
        """On CPU backends the capture thread also preprocesses: one stage less on inference."""
        t0 = time.perf_counter()
        s = self.seg.spec
        frame.tensor = kernels.preprocess(frame.image, s.input_hw, s.input.mean, s.input.std)
        frame.pre_ms = (time.perf_counter() - t0) * 1e3

    def _notify(self) -> None:
        with self._arrival:
            self._arrivals += 1
            self._arrival.notify_all()

    def _single_threaded_kernels(self) -> None:
        if kernels._cpu is not None:
            # The stages already run in parallel: a parallel region inside one would wait on
            # cores busy with decoding, ONNX Runtime and encoding. (Per-thread OpenMP setting.)
            kernels._cpu.set_num_threads(self.kernel_threads)

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
                q = self.runners[i].queue
                try:
                    items.append(q.get(timeout=0))
                except queue.Empty:
                    if self.runners[i].done.is_set() and q.empty():
                        pending.remove(i)  # this source is finished and drained
            now = time.perf_counter()
            if len(items) >= self.batch or (deadline is not None and now >= deadline):
                break
            if items and deadline is None:
                deadline = now + self.batch_wait
            wait = POLL if deadline is None else max(0.0, deadline - now)
            with self._arrival:
                self._arrival.wait_for(lambda seen=seen: self._arrivals != seen, timeout=wait)
        return items

    def _inference(self, backend) -> None:
        self._single_threaded_kernels()
        pending = list(range(len(self.runners)))
        items: list = []
        try:
            while pending and not self.stop_event.is_set():
                items = self._gather(pending)
                for sid, seq, out in self._segment(items, backend) if items else ():
                    if self.out_queue.put((seq, out), self.stop_event, key=sid):
                        self.stats.dropped(sid)
                items = []
        except Exception as e:  # out of memory, a broken model: the run stops, loudly
            msg = f"inference failed: {type(e).__name__}: {e}"
            for sid, _, _ in items:
                self.stats.failed(sid, 1)
            self._fail(msg)
        finally:
            self._worker_finished()

    def _worker_finished(self) -> None:
        with self._arrival:
            self._workers_left -= 1
            if self._workers_left == 0:
                self._inference_done.set()

    def _segment(
        self, items: list[tuple[int, int, Frame]], backend
    ) -> list[tuple[int, int, object]]:
        """One batched inference; ``(source, seq, result)`` per frame: a StreamResult on GPU
        pipelines, ``(source, frame, scores)`` for the output stage to post-process on CPUs."""
        gaps = [(sid, seq, (sid, None, None)) for sid, seq, f in items if f is None]
        items = [it for it in items if it[2] is not None]  # frames that failed to read: gaps
        if not items:
            return gaps
        return gaps + self._infer(items, backend)

    def _infer(self, items: list[tuple[int, int, Frame]], backend) -> list[tuple[int, int, object]]:
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
        smooth = [self._smooth_for(sid, f) for sid, _, f in items]
        results = self.seg.segment([f.image for f in frames], overlay_alpha=alpha, smooth=smooth)
        return [(sid, seq, StreamResult.of(r, sid, f)) for r, (sid, seq, f) in zip(results, items)]

    def _postprocess(self, item) -> StreamResult:
        sid, frame, scores = item
        t0 = time.perf_counter()
        alpha = self.alpha if self.overlay else None
        r = self.seg.postprocess(scores, frame.image, alpha, smooth=self._smooth_for(sid, frame))
        post = (time.perf_counter() - t0) * 1e3
        r.timings_ms = {"pre": frame.pre_ms, "infer": frame.infer_ms, "post": post}
        return StreamResult.of(r, sid, frame)

    def _in_order(self) -> Iterator:
        """Inference results in capture order per source. every-frame: a result waits until
        its predecessors are out (several workers finish out of order). realtime: a result
        older than one already shown is dropped (and counted)."""
        next_seq = [0] * len(self.runners)
        self._held: list[dict[int, object]] = [{} for _ in self.runners]
        while True:
            try:
                seq, item = self.out_queue.get(timeout=POLL)
            except queue.Empty:
                if self._inference_done.is_set() and self.out_queue.empty():
                    return
                continue
            sid = item[0] if isinstance(item, tuple) else item.source_id
            if self.modes[sid] == "realtime":
                if _is_gap(item):
                    continue
                if seq < next_seq[sid]:
                    self.stats.dropped(sid)
                    continue
                next_seq[sid] = seq + 1
                yield item
                continue
            held = self._held[sid]
            held[seq] = item  # a gap too: its place is counted (failed) already
            while next_seq[sid] in held:
                out = held.pop(next_seq[sid])
                next_seq[sid] += 1
                if not _is_gap(out):
                    yield out

    def _output(self) -> None:
        self._single_threaded_kernels()
        failures = [0] * len(self.sinks)  # consecutive, per sink
        self._disabled: set[int] = set()
        try:
            for res in self._in_order():
                self._busy_sink = -1
                if isinstance(res, tuple):
                    try:
                        res = self._postprocess(res)
                    except Exception as e:
                        self.stats.failed(res[0], 1)
                        raise RuntimeError(
                            f"post-processing failed: {type(e).__name__}: {e}"
                        ) from e
                t0 = time.perf_counter()
                self._write_sinks(res, failures)
                res.timings_ms["sink"] = (time.perf_counter() - t0) * 1e3
                self.stats.frame_out(res.source_id, res.t_capture, res.timings_ms)
        except Exception as e:  # nothing can come out any more: stop everything, loudly
            self._fail(f"output failed: {e}")
        finally:
            self._busy_sink = None

    def _write_sinks(self, res: StreamResult, failures: list[int]) -> None:
        for k, sink in enumerate(self.sinks):
            if k in self._disabled:
                continue
            self._busy_sink = k
            try:
                sink.write(res)
                failures[k] = 0
            except Exception as e:
                failures[k] += 1
                self.stats.sink_error(sink.name)
                log.error(
                    "sink %s failed on frame %d of %s: %s", sink.name, res.index, res.source, e
                )
                if isinstance(e, SinkFailed) or failures[k] >= self.max_sink_errors:
                    self._disable_sink(k, str(e))
            if sink.wants_stop:
                self.stop()
        self._busy_sink = -1

    def _disable_sink(self, k: int, why: str) -> None:
        sink = self.sinks[k]
        self._disabled.add(k)
        log.error("sink %s disabled: %s", sink.name, why)
        self.stats.sink_disabled(sink.name, why)
        try:
            sink.close()
        except Exception as e:
            self.stats.error(f"closing {sink.name}: {e}")

    def _fail(self, msg: str) -> None:
        self.failure = msg
        self.stats.error(msg)
        log.error("%s", msg)
        self.stop()

    # -- run
    def warmup(self) -> None:
        """One untimed frame (and one full batch) through every inference path before capture.

        First calls pay one-off costs: CUDA kernel module loading, cuDNN's algorithm choice and
        allocator growth on a GPU, ONNX Runtime's arena on a CPU. Left to the first real frame,
        they show up as a latency spike and, in realtime mode, as frames dropped before the
        stream has settled.
        """
        h, w = self.seg.spec.input_hw
        for n in sorted({1, self.batch}):
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
        self.failure: str | None = None
        self._workers_left = len(self.infer_backends)
        self._inference_done = threading.Event()
        self._busy_sink: int | None = None
        for sink in self.sinks:
            sink.start([r.name for r in self.runners])
        for r in self.runners:
            if r.source is not None:
                self.stats.state(r.sid, "running")
            r.start()
        self._threads = [
            threading.Thread(target=self._inference, args=(b,), name=f"inference-{k}", daemon=True)
            for k, b in enumerate(self.infer_backends)
        ]
        self._threads.append(threading.Thread(target=self._output, name="output", daemon=True))
        self.stats.t_start = time.perf_counter()
        for t in self._threads:
            t.start()

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(
        self, on_status: Callable[[StreamStats], None] | None = None, status_every: float = 1.0
    ) -> dict:
        """Wait for the end (sources exhausted, duration, stop()); close all; return the report."""
        t_end = time.perf_counter() + self.duration if self.duration else None
        next_status = time.perf_counter() + status_every
        try:
            while self._alive():
                self._threads[-1].join(timeout=POLL)
                now = time.perf_counter()
                for r in self.runners:
                    r.check_stall(now)
                if t_end is not None and now >= t_end:
                    self.stop()
                if on_status is not None and now >= next_status:
                    on_status(self.stats)
                    next_status = now + status_every
        finally:
            self.stop()
            deadline = time.perf_counter() + self.stop_timeout
            for t in self._threads + [r.thread for r in self.runners if r.thread is not None]:
                t.join(timeout=max(0.0, deadline - time.perf_counter()))
            self.close()
        return self.report()

    def run(
        self, on_status: Callable[[StreamStats], None] | None = None, status_every: float = 1.0
    ) -> dict:
        self.start()
        return self.join(on_status, status_every)

    def close(self) -> None:
        """Finalise the sinks and release the sources, except what a stuck thread may be using;
        account for the frames still in the queues (dropped) or stuck in a stage (failed)."""
        busy = getattr(self, "_busy_sink", None)
        for k, sink in enumerate(self.sinks):
            if k in getattr(self, "_disabled", set()):
                continue
            if self._alive() and busy == k:
                self.stats.error(f"sink {sink.name} did not return from write(); left open")
                continue
            try:
                sink.close()
            except Exception as e:
                self.stats.error(f"closing {sink.name}: {e}")
                self.stats.sink_disabled(sink.name, str(e))
        for r in self.runners:
            why = r.close()
            if why and self.stop_event.is_set() and r.thread is not None and r.thread.is_alive():
                self.stats.error(why)
        self._account_for_leftovers()

    def _account_for_leftovers(self) -> None:
        # Gaps (frames that failed to read) are counted already: only frames count here.
        for r in self.runners:
            self.stats.dropped(r.sid, sum(1 for _, _, f in r.queue.drain() if f is not None))
        for sid, items in enumerate(self.out_queue.drain()):
            self.stats.dropped(sid, sum(1 for _, res in items if not _is_gap(res)))
        for sid, held in enumerate(getattr(self, "_held", [])):
            self.stats.dropped(sid, sum(1 for res in held.values() if not _is_gap(res)))
            held.clear()
        for sid, s in enumerate(self.stats.sources):  # in a stage that never returned: failed
            stuck = s.frames_in - s.frames_out - s.frames_dropped - s.frames_failed
            if stuck > 0:
                self.stats.failed(sid, stuck, f"{stuck} frames were in a stage that did not return")
            if s.state in ("running", "reconnecting", "starting"):
                self.stats.state(sid, "stopped")

    @property
    def exit_code(self) -> int:
        """0 when every source ended normally or the run was stopped; else why it was not."""
        if getattr(self, "failure", None):
            return EXIT_INFERENCE
        if any(s.state == "failed" or s.frames_failed for s in self.stats.sources):
            return EXIT_SOURCE  # a source gave up, or frames of it could not be read
        if self.stats.sinks_disabled:
            return EXIT_SINK
        return EXIT_OK

    def report(self) -> dict:
        b = self.seg.backend
        rep = self.stats.report(
            self.seg.model_path, f"{b.name} ({b.device}, {self.seg.kernels} kernels)"
        )
        rep["exit_code"] = self.exit_code
        return rep


def _is_gap(item) -> bool:
    """A place-holder for a frame that failed to read (its number keeps the order)."""
    return isinstance(item, tuple) and len(item) == 3 and item[1] is None


def _check_settings(mode, max_frames, duration, alpha) -> None:
    if mode is not None and mode not in MODES:
        raise EdgesegError(f"unknown mode '{mode}'; choose realtime or every-frame")
    if max_frames is not None and max_frames < 1:
        raise EdgesegError("max_frames must be at least 1")
    if duration is not None and duration <= 0:
        raise EdgesegError("duration must be positive")
    if not 0.0 <= alpha <= 1.0:
        raise EdgesegError(f"alpha must be between 0 and 1, got {alpha}")


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
    """Iterate over a source's results through the threaded pipeline (see Segmenter.stream).

    Raises :class:`EdgesegError` at the end when the run failed (a source, inference, a sink).
    """
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
                yield q.get(timeout=POLL)
            except queue.Empty:
                continue
        if failed:
            raise failed[0]
        if report.get("exit_code", 0):
            raise EdgesegError(f"the stream failed: {'; '.join(report['errors'][:3])}")
    finally:
        pipe.stop()
        while not done.is_set():  # unblock the output stage if it waits on a full iterator queue
            try:
                q.get(timeout=POLL)
            except queue.Empty:
                pass


__all__ = ["MODES", "StreamPipeline", "StreamResult", "default_mode", "stream"]
