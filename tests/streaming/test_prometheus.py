"""``edgeseg stream --metrics-port``: Prometheus metrics scraped from a running stream."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edgeseg.errors import EdgesegError
from edgeseg.streaming.metrics import MetricsServer
from edgeseg.streaming.stats import FPS_WINDOW, LATENCY_BOUNDS, Buckets, StreamStats
from edgeseg.testing import free_port

WAIT_S = 60  # the most a test waits for the stream to get going: a hang fails instead


def _scrape(url: str) -> dict[str, list]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples, name: str, **labels) -> float:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{name} {labels}")


def _bounds(samples, name: str, **labels) -> tuple[float, float]:
    """The least and the most the observations of histogram ``name`` can add up to, from its
    cumulative buckets (each observation is above the bucket below and at most its ``le``)."""
    buckets = sorted(
        (float(s.labels["le"]), s.value)
        for s in samples
        if s.name == f"{name}_bucket" and all(s.labels.get(k) == v for k, v in labels.items())
    )
    lo = hi = below = 0.0
    counted = 0.0
    for le, cumulative in buckets:
        n = cumulative - counted
        if n:
            lo, hi = lo + n * below, hi + n * le
        below, counted = le, cumulative
    return lo, hi


def _scrape_mid_stream(tiny_onnx, sources: list[str]):
    """Two scrapes of a running stream, ``FPS_WINDOW`` seconds apart: ``(first, second, (the
    least, the most) seconds between the two snapshots)``."""
    port = free_port()
    args = ["stream", "--model", tiny_onnx, "--metrics-port", port, "--duration", "60"]
    for s in sources:
        args += ["--source", s]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        deadline, metrics = time.monotonic() + WAIT_S, None
        while time.monotonic() < deadline:
            try:
                metrics = _scrape(url)
                if _value(metrics["edgeseg_frames_out"], "edgeseg_frames_out_total") > 40:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(0.3)
        assert metrics is not None, "the metrics endpoint never answered"
        before_first = time.monotonic()
        first = _scrape(url)
        after_first = time.monotonic()
        time.sleep(max(0.0, FPS_WINDOW - (after_first - before_first)))
        before_second = time.monotonic()
        second = _scrape(url)
        after_second = time.monotonic()
        return first, second, (before_second - after_first, after_second - before_first)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, err


def test_a_scrape_mid_stream_finds_every_metric_with_sane_values(tiny_onnx):
    sources = ["synthetic:160x96@25", "synthetic:128x64@10"]
    a, m, (least, most) = _scrape_mid_stream(tiny_onnx, sources)
    names = [f"synthetic:{s.split(':')[1]}" for s in sources]
    common = {"model": "model.onnx", "backend": "ort"}
    for source in names:
        labels = {**common, "source": source}
        frames_in = _value(m["edgeseg_frames_in"], "edgeseg_frames_in_total", **labels)
        out = _value(m["edgeseg_frames_out"], "edgeseg_frames_out_total", **labels)
        dropped = _value(m["edgeseg_frames_dropped"], "edgeseg_frames_dropped_total", **labels)
        assert frames_in > 0 and 0 < out <= frames_in and dropped >= 0
        assert _value(m["edgeseg_reconnects"], "edgeseg_reconnects_total", **labels) == 0
        assert _value(m["edgeseg_outage_seconds"], "edgeseg_outage_seconds_total", **labels) == 0
        # frames were read between the scrapes: the newest is younger than the time between them
        assert frames_in > _value(a["edgeseg_frames_in"], "edgeseg_frames_in_total", **labels)
        age = _value(m["edgeseg_newest_frame_age_seconds"], "edgeseg_newest_frame_age_seconds")
        assert 0 <= age <= most
        # the gauge (outputs a second over the last FPS_WINDOW s) against the outputs counted
        # between the two scrapes, FPS_WINDOW s apart
        more = out - _value(a["edgeseg_frames_out"], "edgeseg_frames_out_total", **labels)
        fps = _value(m["edgeseg_fps"], "edgeseg_fps", **labels)
        assert more / most * 0.8 - 1 <= fps <= more / least * 1.2 + 1, (fps, more, least, most)
        assert _value(m["edgeseg_source_up"], "edgeseg_source_up", **labels) == 1
        count = _value(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds_count", **labels)
        assert count == out
        inf = _value(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds_bucket", le="+Inf")
        assert inf > 0
        total = _value(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds_sum", **labels)
        lo, hi = _bounds(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds", **labels)
        assert 0 < total and lo <= total <= hi  # the sum and the buckets count the same seconds
    for stage in ("decode", "pre", "infer", "post", "sink"):
        n = _value(m["edgeseg_stage_seconds"], "edgeseg_stage_seconds_count", stage=stage)
        assert n > 0, stage
        total = _value(m["edgeseg_stage_seconds"], "edgeseg_stage_seconds_sum", stage=stage)
        lo, hi = _bounds(m["edgeseg_stage_seconds"], "edgeseg_stage_seconds", stage=stage)
        assert lo <= total <= hi, stage
    assert _value(m["process_resident_memory_bytes"], "process_resident_memory_bytes") > 1e7
    assert _value(m["process_open_fds"], "process_open_fds") > 3


def test_buckets_are_cumulative_and_inclusive():
    b = Buckets(LATENCY_BOUNDS)
    for v in (0.005, 0.006, 0.2, 9.0):
        b.add(v)
    cum = dict(b.cumulative())
    assert cum["0.005"] == 1 and cum["0.01"] == 2 and cum["0.25"] == 3 and cum["+Inf"] == 4
    assert b.sum == pytest.approx(9.211)


def test_metrics_listen_on_localhost_unless_told_and_a_busy_port_is_one_clear_error():
    stats = StreamStats(["cam"], ["realtime"])
    server = MetricsServer(stats, 0, model="m.onnx", backend="ort")
    try:
        assert server.httpd.server_address[0] == "127.0.0.1"
        text = urllib.request.urlopen(server.url, timeout=5).read().decode()
        assert re.search(r'edgeseg_frames_in_total\{.*source="cam".*\} 0\.0', text)
        with pytest.raises(EdgesegError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
            MetricsServer(stats, server.port, model="m.onnx", backend="ort")
    finally:
        server.close()


def test_mean_confidence_is_served_only_when_the_stream_computes_it():
    """The gauge is the mean of the last 30 frames' mean confidence, per source; a source
    without confidence has no sample (absent, not a misleading 0)."""
    stats = StreamStats(["cam", "other"], ["realtime", "realtime"])
    for i in range(40):  # the first 10 fall out of the window
        stats.frame_out(0, 0.0, {}, confidence=0.2 if i < 10 else 0.5 + i / 1000)
    stats.frame_out(1, 0.0, {})
    server = MetricsServer(stats, 0, model="m.onnx", backend="ort")
    try:
        families = _scrape(server.url)
    finally:
        server.close()
    (sample,) = families["edgeseg_mean_confidence"]
    assert sample.labels["source"] == "cam"
    assert sample.value == pytest.approx(0.5 + sum(range(10, 40)) / 30 / 1000)
    report = stats.report("m.onnx", "ort")["sources"]
    assert report[0]["mean_confidence"] == pytest.approx(
        (10 * 0.2 + 30 * 0.5 + 0.7350) / 40, abs=1e-4
    )
    assert report[1]["mean_confidence"] is None
