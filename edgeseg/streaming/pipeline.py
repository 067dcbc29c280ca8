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

The parts: :mod:`.capture` (a source's thread), :mod:`.inference` (batches through the model),
:mod:`.output` (order, post-processing, sinks); this class builds them from one
:class:`~edgeseg.streaming.config.StreamConfig` and runs them.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from edgeseg._redact import redact
from edgeseg.errors import EdgesegError
from edgeseg.runtime.smoothing import SmoothState
from edgeseg.streaming.capture import SourceRunner, is_live, open_within
from edgeseg.streaming.config import MODES, StreamConfig
from edgeseg.streaming.frame import StreamResult
from edgeseg.streaming.inference import InferenceStage, Shared, prepare_on_capture
from edgeseg.streaming.output import OutputStage, is_gap
from edgeseg.streaming.queues import POLL, BlockingQueue, LatestSlot, ResultQueue
from edgeseg.streaming.sinks import Sink
from edgeseg.streaming.sources import Source
from edgeseg.streaming.stats import StreamStats

if TYPE_CHECKING:
    from edgeseg.runtime.segmenter import Segmenter

log = logging.getLogger("edgeseg.stream")
# Exit codes of a run (docs/operations.md); the first that applies wins.
EXIT_OK, EXIT_INFERENCE, EXIT_SOURCE, EXIT_SINK = 0, 4, 3, 5


def default_mode(source: Source | None, spec: str) -> str:
    live = source.live if source is not None else is_live(spec)
    return "realtime" if live else "every-frame"


def open_sources(
    sources: list, cfg: StreamConfig, options: dict, opened: list[Source]
) -> list[tuple[str, Source | None]]:
    """(spec, opened source or None) each, every source opened also appended to ``opened``;
    with ``reconnect`` a live source that cannot be opened yet is retried by its thread instead
    of failing the start."""
    out = []
    for s in sources:
        if isinstance(s, Source):
            opened.append(s)
            out.append((s.spec, s))
            continue
        try:
            src = open_within(s, cfg.max_frames, cfg.open_timeout, **options)
        except EdgesegError as e:
            if not (cfg.reconnect and is_live(str(s))):
                raise
            log.warning("%s; retrying until it is up (reconnect)", e)
            src = None
        if src is not None:
            opened.append(src)
        out.append((str(s), src))
    return out


def stream_config(config: StreamConfig | None, settings: dict) -> StreamConfig:
    """``config`` (or the defaults) with ``settings`` (StreamConfig field names) replacing its
    values; an unknown name is one error that names it."""
    if not settings:
        return config or StreamConfig()
    names = {f.name for f in dataclasses.fields(StreamConfig)}
    unknown = sorted(set(settings) - names)
    if unknown:
        raise EdgesegError(
            f"unknown stream setting {', '.join(unknown)}; see StreamConfig (edgeseg stream -h)"
        )
    return dataclasses.replace(config or StreamConfig(), **settings)


class StreamPipeline:
    """Run one model over one or more sources into sinks; ``run()`` returns the report dict.

    Args:
        segmenter: the :class:`~edgeseg.runtime.segmenter.Segmenter` shared by all sources.
        sources: source specs (see :mod:`edgeseg.streaming.sources`) or opened Source objects;
            by default the config's.
        sinks: where results go. A sink that raises is logged and skipped; after
            ``max_sink_errors`` failures in a row (or one :class:`SinkFailed`) it is disabled.
        config: every setting (:class:`~edgeseg.streaming.config.StreamConfig`, what ``edgeseg
            stream`` parses); ``settings`` replace single fields of it (``mode="realtime"``).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        sources: list | None = None,
        *,
        sinks: list[Sink] | None = None,
        config: StreamConfig | None = None,
        **settings,
    ) -> None:
        sources = list(sources) if sources is not None else None
        given = [s for s in sources or [] if isinstance(s, Source)]  # ours to close on failure
        try:
            cfg = self.cfg = stream_config(config, settings)
            cfg.check(sources=False)
        except BaseException:
            for src in given:
                src.close()
            raise
        sources = cfg.sources if sources is None else sources
        self.seg = segmenter
        self.sinks = list(sinks or [])
        self.stop_event = threading.Event()
        self.stats = StreamStats()
        self.open_options = {"rtsp_transport": cfg.rtsp_transport, "reader": cfg.reader}
        self._threads: list[threading.Thread] = []
        self.runners: list[SourceRunner] = []
        try:
            opened = self._open_sources(sources)
            if not opened:
                raise EdgesegError(
                    "no source given: a camera, file, folder, URL, pipeline or 'synthetic'"
                )
            self.modes = [cfg.mode or default_mode(src, spec) for spec, src in opened]
            # On CPU backends the stages are pre (capture thread), infer, post (output thread);
            # GPU pipelines keep pre/infer/post together on the device.
            split = segmenter.kernels in ("cpu", "reference")
            self.shared = Shared(segmenter, cfg, self.stats, self.stop_event, split)
            self.inference = InferenceStage(self.shared, len(opened))
            self.shared.results = ResultQueue(self.modes, cfg.queue_size * self.batch)
            self._make_runners(opened)
            self.shared.smoothing = self._smoothing()
            self.output = OutputStage(self.shared, self.sinks, self.modes)
        except BaseException:
            for src in self._opened:
                src.close()
            raise

    # -- construction
    def _open_sources(self, sources: list) -> list[tuple[str, Source | None]]:
        self._opened: list[Source] = []
        return open_sources(sources, self.cfg, self.open_options, self._opened)

    def _make_runners(self, opened) -> None:
        cfg = self.cfg
        names = [src.name if src is not None else redact(spec) for spec, src in opened]
        self.stats.reset(names, self.modes)
        prepare = prepare_on_capture(self.shared) if self.shared.split else None
        for sid, ((spec, src), mode) in enumerate(zip(opened, self.modes)):
            q = LatestSlot() if mode == "realtime" else BlockingQueue(cfg.queue_size)
            live = src.live if src is not None else is_live(spec)
            stall = cfg.stall_timeout
            stall = (5.0 if live else 0.0) if stall is None else stall
            self.runners.append(
                SourceRunner(
                    sid,
                    spec,
                    src,
                    stats=self.stats,
                    queue=q,
                    stop=self.stop_event,
                    max_frames=cfg.max_frames,
                    reconnect=cfg.reconnect,
                    stall_timeout=stall,
                    backoff=cfg.backoff,
                    open_options=self.open_options,
                    prepare=prepare,
                    on_frame=self.shared.notify,
                    on_start=self.shared.single_threaded_kernels,
                )
            )
        self.shared.runners = self.runners

    def _smoothing(self) -> list[SmoothState | None]:
        """A moving average per source (``smooth`` > 0), else none."""
        if self.cfg.smooth == 0:
            return [None] * len(self.runners)
        self.seg.require_logits("--smooth")
        return [SmoothState(self.cfg.smooth, self.cfg.smooth_cut) for _ in self.runners]

    # -- what it is
    @property
    def batch(self) -> int:
        return self.inference.batch

    @property
    def infer_backends(self) -> list:
        return self.inference.backends

    @infer_backends.setter
    def infer_backends(self, backends: list) -> None:  # tests wrap them
        self.inference.backends = backends

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

    @property
    def failure(self) -> str | None:
        return self.shared.failure

    # -- control
    def stop(self) -> None:
        """Ask every stage to finish; safe from any thread and from signal handlers."""
        self.stop_event.set()

    def warmup(self) -> None:
        """One untimed frame through every inference path (see InferenceStage.warmup)."""
        self.shared.overlay = self.overlay
        self.inference.warmup()

    def start(self) -> None:
        try:
            self.warmup()
        except Exception:  # e.g. CUDA out of memory: release the sources, finalise the sinks
            self.close()
            raise
        self.shared.failure = None
        for sink in self.sinks:
            sink.start([r.name for r in self.runners])
        for r in self.runners:
            if r.source is not None:
                self.stats.state(r.sid, "running")
            r.start()
        self._threads = self.inference.threads()
        self._threads.append(self.output.thread(self.inference.done))
        self.stats.t_start = time.perf_counter()
        for t in self._threads:
            t.start()

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def join(
        self, on_status: Callable[[StreamStats], None] | None = None, status_every: float = 1.0
    ) -> dict:
        """Wait for the end (sources exhausted, duration, stop()); close all; return the report."""
        duration = self.cfg.duration
        t_end = time.perf_counter() + duration if duration else None
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
            deadline = time.perf_counter() + self.cfg.stop_timeout
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
        self.output.close(stuck=self._alive())
        for r in self.runners:
            why = r.close()
            if why and self.stop_event.is_set() and r.thread is not None and r.thread.is_alive():
                self.stats.error(why)
        self._account_for_leftovers()

    def _account_for_leftovers(self) -> None:
        # Gaps (frames that failed to read) are counted already: only frames count here.
        for r in self.runners:
            self.stats.dropped(r.sid, sum(1 for _, _, f in r.queue.drain() if f is not None))
        for sid, items in enumerate(self.shared.results.drain()):
            self.stats.dropped(sid, sum(1 for _, res in items if not is_gap(res)))
        self.output.drain()
        self.stats.close_run()

    @property
    def exit_code(self) -> int:
        """0 when every source ended normally or the run was stopped; else why it was not."""
        if self.failure:
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


__all__ = ["MODES", "StreamPipeline", "StreamResult", "default_mode", "stream_config"]
