"""One source's capture thread: frames into its queue, and the source kept alive.

A :class:`SourceRunner` reads frames, numbers them (the number survives reconnects, so results
stay in order), counts them, and hands them to the inference stage. A live source that stops
delivering, fails, or cannot be opened yet (a robot that boots before its camera) is reopened
with exponential back-off when ``reconnect`` is on; its outage is timed. A watchdog — the
pipeline calls :meth:`check_stall` — treats a source stuck inside ``read()`` or its open for
longer than ``stall_timeout`` as dead, whatever library reads it: the stuck thread is abandoned
(it closes its own capture if it ever returns) and a new one reopens the source, or the source
fails. A capture is never released while a thread may still be inside it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from edgeseg._redact import redact
from edgeseg.errors import EdgesegError
from edgeseg.streaming.sources import Frame, FrameError, Source, open_source
from edgeseg.streaming.stats import StreamStats

log = logging.getLogger("edgeseg.stream")
MAX_ABANDONED = 3  # stuck reader threads per source before it is given up
RETRY_LOG_EVERY = 60.0  # seconds between log lines of a source that stays down


def open_within(spec: str, max_frames: int | None, timeout: float, **options) -> Source:
    """:func:`open_source` (with its keyword ``options``) that gives up after ``timeout``
    seconds (an open that never returns: a camera driver that hangs, a pipe nobody writes to).
    The stuck opener is left behind (a daemon thread); what it opens later is closed."""
    box: dict = {}

    def run() -> None:
        try:
            box["source"] = open_source(spec, max_frames, **options)
        except BaseException as e:  # handed to the caller
            box["error"] = e
        if box.get("late") and "source" in box:
            box["source"].close()

    t = threading.Thread(target=run, name="open", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        box["late"] = True
        raise EdgesegError(f"opening {redact(spec)} did not finish in {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["source"]


def is_live(spec: str) -> bool:
    """Whether a source spec names a live feed (camera, URL, GStreamer, synthetic): the kind that
    is realtime by default and may be reconnected."""
    text = str(spec)
    return (
        text.isdigit()
        or text.startswith(("/dev/video", "synthetic"))
        or "://" in text
        or "!" in text
    )


class SourceRunner:
    """A source, its thread, its queue; see the module docstring."""

    def __init__(
        self,
        sid: int,
        spec: str,
        source: Source | None,
        *,
        stats: StreamStats,
        queue,
        stop: threading.Event,
        max_frames: int | None = None,
        reconnect: bool = False,
        stall_timeout: float = 0.0,
        backoff: tuple[float, float] = (0.25, 0.5),
        open_options: dict | None = None,
        prepare: Callable[[Frame], None] | None = None,
        on_frame: Callable[[], None] | None = None,
        on_start: Callable[[], None] | None = None,
    ) -> None:
        self.sid, self.spec, self.source = sid, str(spec), source
        self.live = source.live if source is not None else is_live(self.spec)
        self.name = source.name if source is not None else redact(self.spec)
        self.stats, self.queue, self.stop = stats, queue, stop
        self.max_frames, self.reconnect = max_frames, reconnect
        self.stall_timeout, self.backoff = stall_timeout, backoff
        self.open_options = open_options or {}
        self.prepare, self.on_frame, self.on_start = prepare, on_frame, on_start
        self.ordered = not hasattr(queue, "has")  # every-frame: results wait for predecessors
        self.count = 0  # frames read so far: the next frame's number
        self.epoch = 0  # openings of the source so far (a reconnect is a new feed)
        self.gen = 0  # the live thread's generation; abandoned threads see it change
        self.busy_since: float | None = None  # when the current read() or open began
        self.done = threading.Event()
        self.thread: threading.Thread | None = None
        self.abandoned: list[threading.Thread] = []
        self._lock = threading.Lock()
        if source is not None:
            stats.sources[sid].reader = source.via

    @property
    def fps(self) -> float:
        return getattr(self.source, "fps", 0.0) or 0.0

    def start(self) -> None:
        gen = self.gen
        self.thread = threading.Thread(
            target=self._run, args=(gen,), name=f"capture-{self.sid}", daemon=True
        )
        self.thread.start()

    # -- the thread
    def _busy(self, fn):
        self.busy_since = time.perf_counter()
        try:
            return fn()
        finally:
            self.busy_since = None

    def _run(self, gen: int) -> None:
        if self.on_start is not None:
            self.on_start()
        try:
            while not self.stop.is_set() and gen == self.gen:
                if self.max_frames is not None and self.count >= self.max_frames:
                    return self._end("ended")
                src = self.source if self.source is not None else self._open(gen)
                if src is None or not self._step(src, gen):
                    return
        except Exception as e:  # a bug or an unexpected library error: this source fails
            self._fail(f"capture failed: {type(e).__name__}: {e}")
        finally:
            if gen == self.gen:
                self.done.set()

    def _step(self, src: Source, gen: int) -> bool:
        """Read one frame and pass it on; False when this thread is finished."""
        try:
            frame = self._busy(src.read)
        except FrameError as e:  # counted as failed; in order, its number is passed on as a gap
            self.stats.frame_in(self.sid, 0.0)
            self.stats.failed(self.sid, 1, redact(str(e)))
            if self.ordered:
                self.queue.put((self.sid, self.count, None), self.stop)
            self.count += 1
            return True
        except Exception as e:
            return self._lost(src, gen, f"read failed ({type(e).__name__}: {e})")
        if gen != self.gen:  # abandoned while inside read(): the capture is this thread's alone
            src.close()
            return False
        if frame is None:
            return (
                self._lost(src, gen, "stopped delivering")
                if self._may_reconnect()
                else self._end("ended")
            )
        frame.index, frame.source, frame.epoch = self.count, self.name, self.epoch
        self.count += 1
        self.stats.frame_in(self.sid, frame.decode_ms)
        if self.prepare is not None:
            self.prepare(frame)
        if self.queue.put((self.sid, frame.index, frame), self.stop):
            self.stats.dropped(self.sid)
        if self.on_frame is not None:
            self.on_frame()
        return True

    def _may_reconnect(self) -> bool:
        return self.reconnect and self.live

    def _lost(self, src: Source, gen: int, why: str) -> bool:
        """The feed is gone: reopen it later (reconnect), or the source has failed."""
        src.close()
        with self._lock:
            if gen == self.gen:
                self.source = None
        if not self._may_reconnect():
            self._fail(f"source {self.name}: {redact(why)}")
            return False
        log.warning("source %s %s; reconnecting", self.name, redact(why))
        self.stats.state(self.sid, "reconnecting", redact(why))
        return True

    def _open(self, gen: int) -> Source | None:
        """Open the source, retrying with back-off when reconnecting; None when this thread is
        done (stopped, abandoned, or the source failed)."""
        delay, limit = self.backoff
        tries, since = 0, time.monotonic()
        while not self.stop.is_set() and gen == self.gen:
            try:
                src = self._busy(
                    lambda: open_source(self.spec, self.max_frames, **self.open_options)
                )
            except EdgesegError as e:
                if not self._may_reconnect():
                    self._fail(str(e))
                    return None
                self.stats.state(self.sid, "reconnecting", str(e) if self.count == 0 else None)
                tries += 1
                if tries == 1:
                    log.warning("%s; retrying every %.2g s", e, limit)
                elif tries % max(1, round(RETRY_LOG_EVERY / limit)) == 0:
                    # one line a minute: days of outage stay readable in the journal
                    down = time.monotonic() - since
                    log.warning("%s; still retrying (%d tries in %.0f s)", e, tries, down)
                if self.stop.wait(delay):
                    return None
                delay = min(limit, delay * 2)
                continue
            with self._lock:
                if gen != self.gen:
                    src.close()
                    return None
                self.source = src
                self.epoch += 1
                self.stats.sources[self.sid].reader = src.via
            if self.stats.sources[self.sid].state == "reconnecting" and self.count:
                self.stats.reconnected(self.sid)
            self.stats.state(self.sid, "running")
            return src
        return None

    def _end(self, state: str) -> None:
        self.stats.state(self.sid, state)

    def _fail(self, msg: str) -> None:
        log.error("%s", msg)
        self.stats.state(self.sid, "failed", msg)

    # -- from the pipeline's thread
    def check_stall(self, now: float) -> None:
        """The watchdog: a read or open stuck longer than ``stall_timeout`` kills the feed."""
        since = self.busy_since
        if (
            not self.stall_timeout
            or since is None
            or self.done.is_set()
            or now - since < self.stall_timeout
        ):
            return
        what = "opening" if self.source is None else "reading"
        msg = f"source {self.name}: stalled ({what} took over {self.stall_timeout:g} s)"
        with self._lock:
            self.gen += 1
            self.busy_since = None
            self.abandoned = [t for t in self.abandoned if t.is_alive()]
            if self.thread is not None:
                self.abandoned.append(self.thread)
            self.source = None
        if self._may_reconnect() and len(self.abandoned) < MAX_ABANDONED:
            log.warning("%s; reconnecting", msg)
            self.stats.state(self.sid, "reconnecting", msg)
            self.start()
        else:
            self._fail(msg)
            self.done.set()

    def close(self) -> str | None:
        """Release the capture unless a thread may still be inside it; the reason if not."""
        if self.busy_since is not None or (self.thread is not None and self.thread.is_alive()):
            return f"source {self.name}: its thread did not return from read(); left open"
        if self.source is not None:
            self.source.close()
            self.source = None
        return None
