"""The stream's output stage: results back in order per source, finished (post-processed on CPU
backends), handed to the sinks; sinks that keep failing are disabled, never the stream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator

from edgeseg.streaming.frame import StreamResult
from edgeseg.streaming.inference import Shared
from edgeseg.streaming.queues import POLL
from edgeseg.streaming.sinks import Sink, SinkFailed

log = logging.getLogger("edgeseg.stream")


def is_gap(item) -> bool:
    """A place-holder for a frame that failed to read (its number keeps the order)."""
    return isinstance(item, tuple) and len(item) == 3 and item[1] is None


class OutputStage:
    """The output thread of a run, with its sinks."""

    def __init__(self, shared: Shared, sinks: list[Sink], modes: list[str]) -> None:
        self.sh, self.sinks, self.modes = shared, sinks, modes
        self.disabled: set[int] = set()
        self.held: list[dict[int, object]] = []
        self.busy_sink: int | None = None  # the sink inside write(), -1 between sinks

    def thread(self, inference_done: threading.Event) -> threading.Thread:
        return threading.Thread(
            target=self._run, args=(inference_done,), name="output", daemon=True
        )

    def _in_order(self, inference_done: threading.Event) -> Iterator:
        """Inference results in capture order per source. every-frame: a result waits until
        its predecessors are out (several workers finish out of order). realtime: a result
        older than one already shown is dropped (and counted)."""
        results, stats = self.sh.results, self.sh.stats
        next_seq = [0] * len(self.modes)
        self.held = [{} for _ in self.modes]
        while True:
            try:
                seq, item = results.get(timeout=POLL)
            except queue.Empty:
                if inference_done.is_set() and results.empty():
                    return
                continue
            sid = item[0] if isinstance(item, tuple) else item.source_id
            if self.modes[sid] == "realtime":
                if is_gap(item):
                    continue
                if seq < next_seq[sid]:
                    stats.dropped(sid)
                    continue
                next_seq[sid] = seq + 1
                yield item
                continue
            held = self.held[sid]
            held[seq] = item  # a gap too: its place is counted (failed) already
            while next_seq[sid] in held:
                out = held.pop(next_seq[sid])
                next_seq[sid] += 1
                if not is_gap(out):
                    yield out

    def _finish(self, item) -> StreamResult:
        """CPU backends: the Segmenter's last step on the model's output."""
        sid, frame, scores = item
        t0 = time.perf_counter()
        r = self.sh.seg.finish(scores, frame.image, self.sh.alpha, self.sh.smooth_for(sid, frame))
        post = (time.perf_counter() - t0) * 1e3
        r.timings_ms = {"pre": frame.pre_ms, "infer": frame.infer_ms, "post": post}
        return StreamResult.of(r, sid, frame)

    def _run(self, inference_done: threading.Event) -> None:
        self.sh.single_threaded_kernels()
        failures = [0] * len(self.sinks)  # consecutive, per sink
        try:
            for res in self._in_order(inference_done):
                self.busy_sink = -1
                if isinstance(res, tuple):
                    try:
                        res = self._finish(res)
                    except Exception as e:
                        self.sh.stats.failed(res[0], 1)
                        raise RuntimeError(
                            f"post-processing failed: {type(e).__name__}: {e}"
                        ) from e
                t0 = time.perf_counter()
                self._write(res, failures)
                res.timings_ms["sink"] = (time.perf_counter() - t0) * 1e3
                self.sh.stats.frame_out(
                    res.source_id, res.t_capture, res.timings_ms, _mean_confidence(res)
                )
        except Exception as e:  # nothing can come out any more: stop everything, loudly
            self.sh.fail(f"output failed: {e}")
        finally:
            self.busy_sink = None

    def _write(self, res: StreamResult, failures: list[int]) -> None:
        for k, sink in enumerate(self.sinks):
            if k in self.disabled:
                continue
            self.busy_sink = k
            try:
                sink.write(res)
                failures[k] = 0
            except Exception as e:
                failures[k] += 1
                self.sh.stats.sink_error(sink.name)
                log.error(
                    "sink %s failed on frame %d of %s: %s", sink.name, res.index, res.source, e
                )
                if isinstance(e, SinkFailed) or failures[k] >= self.sh.cfg.max_sink_errors:
                    self._disable(k, str(e))
            if sink.wants_stop:
                self.sh.stop.set()
        self.busy_sink = -1

    def _disable(self, k: int, why: str) -> None:
        sink = self.sinks[k]
        self.disabled.add(k)
        log.error("sink %s disabled: %s", sink.name, why)
        self.sh.stats.sink_disabled(sink.name, why)
        try:
            sink.close()
        except Exception as e:
            self.sh.stats.error(f"closing {sink.name}: {e}")

    def close(self, stuck: bool) -> None:
        """Finalise the sinks, except one a stuck output thread is still inside (``stuck``)."""
        for k, sink in enumerate(self.sinks):
            if k in self.disabled:
                continue
            if stuck and self.busy_sink == k:
                self.sh.stats.error(f"sink {sink.name} did not return from write(); left open")
                continue
            try:
                sink.close()
            except Exception as e:
                self.sh.stats.error(f"closing {sink.name}: {e}")
                self.sh.stats.sink_disabled(sink.name, str(e))

    def drain(self) -> None:
        """Results still held for ordering at the end: dropped."""
        for sid, held in enumerate(self.held):
            self.sh.stats.dropped(sid, sum(1 for res in held.values() if not is_gap(res)))
            held.clear()


def _mean_confidence(res: StreamResult) -> float | None:
    """The frame's mean per-pixel confidence (0-1), when the stream computes confidence."""
    if res.confidence is None:
        return None
    import cv2

    return cv2.mean(res.confidence)[0] / 255.0  # SIMD: a fraction of NumPy's mean
