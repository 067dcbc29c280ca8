"""Latency measurement: timed loops and the one summary every report uses."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def summarize(samples_ms: Iterable[float], qs: tuple[int, ...] = (50, 90, 99)) -> dict[str, Any]:
    """Percentiles ``p<q>`` (NumPy's linear interpolation), mean, min, max, throughput
    (1000 / mean: back-to-back calls) and the sample count; zeros when there are no samples."""
    a = (
        np.fromiter(samples_ms, np.float64)
        if not isinstance(samples_ms, np.ndarray)
        else samples_ms
    )
    a = a.astype(np.float64, copy=False)
    if a.size == 0:
        return {
            **{f"p{q}": 0.0 for q in qs},
            **dict.fromkeys(("mean", "min", "max"), 0.0),
            "throughput_fps": 0.0,
            "samples": 0,
        }
    mean = float(a.mean())
    return {
        **{f"p{q}": round(float(np.percentile(a, q)), 4) for q in qs},
        "mean": round(mean, 4),
        "min": round(float(a.min()), 4),
        "max": round(float(a.max()), 4),
        "throughput_fps": round(1e3 / mean, 3) if mean > 0 else 0.0,
        "samples": int(a.size),
    }


def time_calls(fn: Callable[[], Any], warmup: int, iters: int) -> list[float]:
    """Wall-clock milliseconds of ``iters`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out
