"""Streaming statistics: frame counts per source, end-to-end latency and per-stage times as
percentiles, reconnects and outages, errors of sources, inference and sinks.

Samples live in fixed-size rings (the last 65,536 frames) and error lists are bounded, so a
stream that runs for days keeps flat memory. Every frame read is accounted for exactly once:
``frames_in == frames_out + frames_dropped + frames_failed``, per source and in total, once a
run has ended. The object is long-lived (a display or a metrics endpoint may hold it): a new run
resets it in place.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import deque
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np

from edgeseg.timing import summarize

STAGES = ("decode", "pre", "infer", "post", "sink")
COUNTS = ("frames_in", "frames_out", "frames_dropped", "frames_failed", "reconnects")
MAX_ERRORS = 20  # kept per list; the count goes on
MAX_OUTAGES = 20  # the newest kept per source; reconnects and outage_s count them all
RECENT_CONFIDENCE = 30  # frames the metrics' mean confidence covers: about a second of video


def _wall(t: float) -> str:
    """An epoch time as ISO 8601 UTC with milliseconds (the report's clock for events)."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


# Histogram bounds (seconds) of the metrics endpoint: glass-to-label latency, and stage times.
LATENCY_BOUNDS = (
    0.0025,
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
STAGE_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FPS_WINDOW = 5.0  # seconds of outputs a source's FPS is measured over


class Buckets:
    """A cumulative histogram of every sample since the run began (Prometheus semantics: a
    sample counts in each bucket whose upper bound it does not exceed)."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """``[(upper bound, samples at or below it), ..., ("+Inf", all samples)]``."""
        out, total = [], 0
        for bound, n in zip([*map(str, self.bounds), "+Inf"], self.counts):
            total += n
            out.append((bound, total))
        return out


class Ring:
    """The most recent ``capacity`` float samples."""

    def __init__(self, capacity: int = 65536) -> None:
        self.buf = np.zeros(capacity, np.float64)
        self.n = 0

    def add(self, value: float) -> None:
        self.buf[self.n % len(self.buf)] = value
        self.n += 1

    def values(self) -> np.ndarray:
        """The kept samples, oldest first."""
        if self.n <= len(self.buf):
            return self.buf[: self.n]
        return np.roll(self.buf, -(self.n % len(self.buf)))

    def recent(self, k: int) -> np.ndarray:
        return self.values()[-k:]


def percentiles(samples: np.ndarray, qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., ...}`` of ``samples`` (0.0 without samples), see edgeseg.timing."""
    summary = summarize(samples, qs)
    return {f"p{q}": summary[f"p{q}"] for q in qs}


@dataclass
class SourceStats:
    """One source's counts and state."""

    name: str
    mode: str
    state: str = "starting"  # starting | running | reconnecting | ended | stopped | failed
    reader: str = ""  # how a network stream is read and decoded (Source.via), "" otherwise
    frames_in: int = 0
    frames_out: int = 0
    frames_dropped: int = 0
    frames_failed: int = 0
    reconnects: int = 0
    outage_s: float = 0.0
    error_count: int = 0
    errors: list[str] = field(default_factory=list)
    outages: list[dict] = field(default_factory=list)
    outage_since: float | None = None
    outage_wall: float = 0.0  # time.time() when the current outage began
    outage_reason: str = ""
    last_frame: float | None = None  # time.perf_counter() of the newest frame read
    confidence_sum: float = 0.0  # mean per-pixel confidence of each frame out, summed
    confidence_frames: int = 0

    def add_error(self, msg: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(msg)

    def begin_outage(self, now: float, reason: str | None) -> None:
        if self.outage_since is None:
            self.outage_since, self.outage_wall = now, time.time()
            self.outage_reason = reason or ""

    def end_outage(self, now: float) -> None:
        """The feed is back (a frame arrived) or the source is done: the outage is logged."""
        if self.outage_since is None:
            return
        seconds = now - self.outage_since
        self.outage_s += seconds
        self.outages = self.outages[-(MAX_OUTAGES - 1) :] + [
            {
                "start": _wall(self.outage_wall),
                "end": _wall(self.outage_wall + seconds),
                "seconds": round(seconds, 3),
                "reason": self.outage_reason,
            }
        ]
        self.outage_since = None


class StreamStats:
    """Thread-safe counters and timings of one stream run (see the module docstring)."""

    def __init__(self, names: list[str] | None = None, modes: list[str] | None = None) -> None:
        self.lock = threading.Lock()
        self.reset(names or [], modes or [])

    def reset(self, names: list[str], modes: list[str]) -> None:
        """Start over for a new run, keeping this object (others may hold it)."""
        with self.lock:
            self.sources = [SourceStats(n, m) for n, m in zip(names, modes)]
            self.latency = Ring()
            self.stages = {s: Ring() for s in STAGES}
            self.latency_hist = [Buckets(LATENCY_BOUNDS) for _ in names]
            self.stage_hist = {s: Buckets(STAGE_BOUNDS) for s in STAGES}
            self.out_times = [deque(maxlen=1024) for _ in names]
            self.recent_confidence = [deque(maxlen=RECENT_CONFIDENCE) for _ in names]
            self.t_start = time.perf_counter()
            self.t_last_out: float | None = None
            self.sink_errors: dict[str, int] = {}
            self.sinks_disabled: list[str] = []
            self.errors: list[str] = []

    # -- counting (called from the stages' threads)
    def frame_in(self, sid: int, decode_ms: float) -> None:
        with self.lock:
            s = self.sources[sid]
            s.frames_in += 1
            s.last_frame = time.perf_counter()
            s.end_outage(s.last_frame)
            self.stages["decode"].add(decode_ms)
            self.stage_hist["decode"].add(decode_ms / 1e3)

    def dropped(self, sid: int, n: int = 1) -> None:
        with self.lock:
            self.sources[sid].frames_dropped += n

    def failed(self, sid: int, n: int = 1, error: str | None = None) -> None:
        with self.lock:
            self.sources[sid].frames_failed += n
            if error:
                self.sources[sid].add_error(error)

    def frame_out(
        self,
        sid: int,
        t_capture: float,
        stage_ms: dict[str, float],
        confidence: float | None = None,
    ) -> None:
        """A frame went out; ``confidence``: its mean per-pixel confidence, when computed."""
        now = time.perf_counter()
        with self.lock:
            self.sources[sid].frames_out += 1
            if confidence is not None:
                self.sources[sid].confidence_sum += confidence
                self.sources[sid].confidence_frames += 1
                self.recent_confidence[sid].append(confidence)
            self.latency.add((now - t_capture) * 1e3)
            self.latency_hist[sid].add(now - t_capture)
            self.out_times[sid].append(now)
            for k in ("pre", "infer", "post", "sink"):
                if k in stage_ms:
                    self.stages[k].add(stage_ms[k])
                    self.stage_hist[k].add(stage_ms[k] / 1e3)
            self.t_last_out = now

    def state(self, sid: int, state: str, error: str | None = None) -> None:
        """A source's new state. An outage runs from losing the feed to its next frame (a
        reopened stream that sends nothing yet is still out), or to the source's end."""
        now = time.perf_counter()
        with self.lock:
            s = self.sources[sid]
            if state == "reconnecting":
                s.begin_outage(now, error)
            elif state != "running":
                s.end_outage(now)
            s.state = state
            if error:
                s.add_error(error)

    def reconnected(self, sid: int) -> None:
        with self.lock:
            self.sources[sid].reconnects += 1

    def sink_error(self, name: str) -> None:
        with self.lock:
            self.sink_errors[name] = self.sink_errors.get(name, 0) + 1

    def sink_disabled(self, name: str, why: str) -> None:
        with self.lock:
            self.sinks_disabled.append(name)
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(f"sink {name} disabled: {why}")

    def error(self, msg: str) -> None:
        with self.lock:
            if len(self.errors) < MAX_ERRORS:
                self.errors.append(msg)

    def close_run(self) -> None:
        """At the end of a run: frames still inside a stage that never returned count as
        failed (every frame read is accounted for), and running sources as stopped."""
        for sid, s in enumerate(self.sources):
            stuck = s.frames_in - s.frames_out - s.frames_dropped - s.frames_failed
            if stuck > 0:
                self.failed(sid, stuck, f"{stuck} frames were in a stage that did not return")
            if s.state in ("running", "reconnecting", "starting"):
                self.state(sid, "stopped")

    # -- reading
    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(s, k) for s in self.sources) for k in COUNTS}

    def fps(self) -> float:
        """Output frames per second over the whole run (start to the last output)."""
        out = sum(s.frames_out for s in self.sources)
        if not out or self.t_last_out is None:
            return 0.0
        return out / max(1e-9, self.t_last_out - self.t_start)

    def recent_fps(self, sid: int, now: float | None = None) -> float:
        """A source's output frames per second over the last ``FPS_WINDOW`` seconds."""
        now = time.perf_counter() if now is None else now
        times = [t for t in self.out_times[sid] if t >= now - FPS_WINDOW]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(1e-9, times[-1] - times[0])

    def snapshot(self) -> dict:
        """A consistent copy of what the metrics endpoint exports (taken at scrape time, so
        serving metrics costs the frames nothing)."""
        now = time.perf_counter()
        with self.lock:
            sources = []
            for sid, s in enumerate(self.sources):
                sources.append(
                    {
                        **{k: getattr(s, k) for k in (*COUNTS, "name", "state")},
                        "outage_s": self._outage(s, now),
                        "age_s": None if s.last_frame is None else now - s.last_frame,
                        "fps": self.recent_fps(sid, now),
                        "confidence": (
                            float(np.mean(self.recent_confidence[sid]))
                            if self.recent_confidence[sid]
                            else None
                        ),
                        "latency": (
                            self.latency_hist[sid].cumulative(),
                            self.latency_hist[sid].sum,
                        ),
                    }
                )
            stages = {k: (h.cumulative(), h.sum) for k, h in self.stage_hist.items()}
            return {"sources": sources, "stages": stages, "sink_errors": dict(self.sink_errors)}

    def source_line(self, sid: int) -> str:
        """One source's HUD line: its FPS, and its state when not running."""
        with self.lock:
            s = self.sources[sid]
            fps = self.recent_fps(sid)
            state = "" if s.state == "running" else f"  {s.state}"
            return f"{fps:5.1f} FPS  dropped {s.frames_dropped}{state}"

    def status_line(self) -> str:
        """One line for a terminal: what the stream does now (the last 300 frames)."""
        with self.lock:
            p = percentiles(self.latency.recent(300), (50, 99))
            t = self.totals()
            waiting = [s.name for s in self.sources if s.state == "reconnecting"]
            line = (
                f"{t['frames_out']} frames  {self.fps():5.1f} FPS  latency p50 {p['p50']:.1f} ms "
                f"p99 {p['p99']:.1f} ms  dropped {t['frames_dropped']}"
            )
            return line + (f"  waiting for {', '.join(waiting)}" if waiting else "")

    def _all_errors(self) -> list[str]:
        """The run's errors, and the first of each source that failed or lost frames."""
        out = list(self.errors)
        for s in self.sources:
            if s.errors and (s.state == "failed" or s.frames_failed):
                msg = s.errors[-1] if s.state == "failed" else s.errors[0]
                out.append(msg if s.name in msg else f"source {s.name}: {msg}")
        return out

    def _outage(self, s: SourceStats, now: float) -> float:
        return s.outage_s + (now - s.outage_since if s.outage_since is not None else 0.0)

    def report(self, model: str, backend: str) -> dict:
        """The ``--report`` JSON: totals, then one entry per source (docs/operations.md)."""
        now = time.perf_counter()
        with self.lock:
            lat = self.latency.values()
            sources = []
            for s in self.sources:
                hidden = ("outage_since", "outage_wall", "outage_reason", "last_frame")
                hidden += ("confidence_sum", "confidence_frames")
                d = {k: v for k, v in asdict(s).items() if k not in hidden}
                d["outage_s"] = round(self._outage(s, now), 3)
                n = s.confidence_frames
                d["mean_confidence"] = round(s.confidence_sum / n, 4) if n else None
                sources.append(d)
            return {
                **self.totals(),
                "fps": round(self.fps(), 3),
                "latency_ms": {
                    **percentiles(lat, (50, 95, 99)),
                    "max": round(float(lat.max()), 3) if lat.size else 0.0,
                },
                "stages_ms": {s: percentiles(self.stages[s].values(), (50, 99)) for s in STAGES},
                "outage_s": round(sum(self._outage(s, now) for s in self.sources), 3),
                "source": ", ".join(s.name for s in self.sources),
                "model": model,
                "backend": backend,
                "sink_errors": dict(self.sink_errors),
                "sinks_disabled": list(self.sinks_disabled),
                "errors": self._all_errors(),
                "sources": sources,
            }
