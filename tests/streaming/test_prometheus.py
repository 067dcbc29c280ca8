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
from edgeseg.streaming.stats import LATENCY_BOUNDS, Buckets, StreamStats
from edgeseg.testing import free_port


def _scrape(url: str) -> dict[str, list]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples, name: str, **labels) -> float:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{name} {labels}")


def _scrape_mid_stream(tiny_onnx, sources: list[str]) -> tuple[dict, str]:
    port = free_port()
    args = ["stream", "--model", tiny_onnx, "--metrics-port", port, "--duration", "30"]
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
        deadline, metrics = time.monotonic() + 60, None
        while time.monotonic() < deadline:
            try:
                metrics = _scrape(url)
                if _value(metrics["edgeseg_frames_out"], "edgeseg_frames_out_total") > 40:
                    break
            except (OSError, KeyError):
                pass
            time.sleep(0.3)
        assert metrics is not None, "the metrics endpoint never answered"
        first = _value(metrics["edgeseg_frames_in"], "edgeseg_frames_in_total")
        time.sleep(1.0)
        later = _scrape(url)
        assert _value(later["edgeseg_frames_in"], "edgeseg_frames_in_total") > first
        return later, url
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err


def test_a_scrape_mid_stream_finds_every_metric_with_sane_values(tiny_onnx):
    sources = ["synthetic:160x96@25", "synthetic:128x64@10"]
    m, url = _scrape_mid_stream(tiny_onnx, sources)
    names = [f"synthetic:{s.split(':')[1]}" for s in sources]
    common = {"model": "model.onnx", "backend": "ort"}
    for source, fps in zip(names, (25, 10)):
        labels = {**common, "source": source}
        frames_in = _value(m["edgeseg_frames_in"], "edgeseg_frames_in_total", **labels)
        out = _value(m["edgeseg_frames_out"], "edgeseg_frames_out_total", **labels)
        dropped = _value(m["edgeseg_frames_dropped"], "edgeseg_frames_dropped_total", **labels)
        assert frames_in > 0 and 0 < out <= frames_in and dropped >= 0
        assert _value(m["edgeseg_reconnects"], "edgeseg_reconnects_total", **labels) == 0
        assert _value(m["edgeseg_outage_seconds"], "edgeseg_outage_seconds_total", **labels) == 0
        assert 0.6 * fps < _value(m["edgeseg_fps"], "edgeseg_fps", **labels) < 1.4 * fps
        age = _value(m["edgeseg_newest_frame_age_seconds"], "edgeseg_newest_frame_age_seconds")
        assert 0 <= age < 1.0
        assert _value(m["edgeseg_source_up"], "edgeseg_source_up", **labels) == 1
        count = _value(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds_count", **labels)
        assert count == out
        inf = _value(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds_bucket", le="+Inf")
        assert inf > 0
        total = _value(m["edgeseg_latency_seconds"], "edgeseg_latency_seconds_sum", **labels)
        assert 0 < total / count < 0.5  # a mean latency under half a second
    for stage in ("decode", "pre", "infer", "post", "sink"):
        n = _value(m["edgeseg_stage_seconds"], "edgeseg_stage_seconds_count", stage=stage)
        assert n > 0, stage
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
