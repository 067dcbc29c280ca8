"""Streaming statistics: frame counters, end-to-end latency and per-stage times, as percentiles.

Samples live in fixed-size rings (the last 65,536 frames), so a stream that runs for days keeps
flat memory; percentiles are NumPy's (linear interpolation).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from edgeseg.timing import summarize

STAGES = ("decode", "pre", "infer", "post", "sink")


class Ring:
    """The most recent ``capacity`` float samples."""

    def __init__(self, capacity: int = 65536) -> None:
        self.buf = np.zeros(capacity, np.float64)
        self.n = 0

    def add(self, value: float) -> None:
        self.buf[self.n % len(self.buf)] = value
        self.n += 1

    def values(self) -> np.ndarray:
        return self.buf[: min(self.n, len(self.buf))]


def percentiles(samples: np.ndarray, qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., ...}`` of ``samples`` (0.0 without samples), see edgeseg.timing."""
    summary = summarize(samples, qs)
    return {f"p{q}": summary[f"p{q}"] for q in qs}


class StreamStats:
    """Thread-safe counters and timings of one stream run."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.frames_in = self.frames_out = self.frames_dropped = 0
        self.latency = Ring()
        self.stages = {s: Ring() for s in STAGES}
        self.t_start = time.perf_counter()
        self.t_first_out: float | None = None
        self.t_last_out: float | None = None
        self.sink_errors = 0
        self.reconnects = 0

    def frame_in(self, decode_ms: float) -> None:
        with self.lock:
            self.frames_in += 1
            self.stages["decode"].add(decode_ms)

    def dropped(self, n: int = 1) -> None:
        with self.lock:
            self.frames_dropped += n

    def frame_out(self, t_capture: float, stage_ms: dict[str, float]) -> None:
        now = time.perf_counter()
        with self.lock:
            self.frames_out += 1
            self.latency.add((now - t_capture) * 1e3)
            for k in ("pre", "infer", "post", "sink"):
                if k in stage_ms:
                    self.stages[k].add(stage_ms[k])
            if self.t_first_out is None:
                self.t_first_out = now
            self.t_last_out = now

    def fps(self) -> float:
        """Output frames per second over the whole run (start to the last output)."""
        if not self.frames_out or self.t_last_out is None:
            return 0.0
        return self.frames_out / max(1e-9, self.t_last_out - self.t_start)

    def status_line(self) -> str:
        with self.lock:
            lat = self.latency.values()[-300:]  # recent frames: what the stream does now
            p = percentiles(lat, (50, 99))
            return (
                f"{self.frames_out} frames  {self.fps():5.1f} FPS  latency p50 {p['p50']:.1f} ms "
                f"p99 {p['p99']:.1f} ms  dropped {self.frames_dropped}"
            )

    def report(self, source: str, model: str, backend: str) -> dict:
        """The ``--report`` JSON: exactly the documented fields."""
        with self.lock:
            lat = self.latency.values()
            return {
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_dropped": self.frames_dropped,
                "fps": round(self.fps(), 3),
                "latency_ms": {
                    **percentiles(lat, (50, 95, 99)),
                    "max": round(float(lat.max()), 3) if lat.size else 0.0,
                },
                "stages_ms": {s: percentiles(self.stages[s].values(), (50, 99)) for s in STAGES},
                "source": source,
                "model": model,
                "backend": backend,
            }
