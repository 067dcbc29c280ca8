"""``edgeseg.stream(segmenter, source)``: a source's results as an iterator, through the
threaded pipeline (what ``Segmenter.stream`` forwards to)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from edgeseg.errors import EdgesegError
from edgeseg.streaming.config import StreamConfig
from edgeseg.streaming.frame import StreamResult
from edgeseg.streaming.pipeline import StreamPipeline
from edgeseg.streaming.queues import POLL
from edgeseg.streaming.sinks import Sink

if TYPE_CHECKING:
    from edgeseg.runtime.segmenter import Segmenter


class _QueueSink(Sink):
    """Hands every result to the iterator (the pipeline's mode decides drops)."""

    def __init__(self, q: queue.Queue, overlay: bool) -> None:
        self.q, self.needs_overlay, self.name = q, overlay, "iterator"

    def write(self, result) -> None:
        self.q.put(result)


def stream(
    segmenter: Segmenter,
    source,
    *,
    overlay_alpha: float | None = None,
    sinks: list[Sink] | None = None,
    config: StreamConfig | None = None,
    **settings,
) -> Iterator[StreamResult]:
    """Iterate over the results of ``source`` (a spec, an opened Source, or a list of them).

    ``settings``: fields of :class:`~edgeseg.streaming.config.StreamConfig` (``mode``,
    ``max_frames``, ``duration``, ``reconnect``, ...) replacing those of ``config``;
    ``overlay_alpha``: also blend the overlay (``res.vis``) at that opacity. Raises
    :class:`EdgesegError` at the end when the run failed (a source, inference, a sink).
    """
    q: queue.Queue = queue.Queue(maxsize=8)
    sink = _QueueSink(q, overlay_alpha is not None)
    if overlay_alpha is not None:
        settings["alpha"] = overlay_alpha
    pipe = StreamPipeline(
        segmenter,
        source if isinstance(source, list) else [source],
        sinks=[sink, *(sinks or [])],
        config=config,
        **settings,
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
