"""``edgeseg stream --metrics-port``: the stream's health as Prometheus metrics.

A collector reads :class:`~edgeseg.streaming.stats.StreamStats` when Prometheus scrapes, so the
frames pay nothing for it. Every series carries the ``model`` and ``backend`` labels; per-source
series add ``source`` (its name, credentials removed). Exported (``_total`` for counters):

- ``edgeseg_frames_in_total``, ``..._out_total``, ``..._dropped_total``, ``..._failed_total``,
  ``edgeseg_reconnects_total``, ``edgeseg_outage_seconds_total`` per source;
- ``edgeseg_fps`` (outputs a second over the last 5 s), ``edgeseg_newest_frame_age_seconds``
  (how long since the source's last frame: the watchdog's view), ``edgeseg_source_up`` (1 while
  frames flow) per source; ``edgeseg_mean_confidence`` (the mean per-pixel confidence of the
  last 30 frames out, 0-1: a drop is the cheapest alarm that the camera sees what the model was
  not trained for) per source, when the stream computes confidence (``--confidence``);
- ``edgeseg_latency_seconds``: capture-to-labels histogram per source;
  ``edgeseg_stage_seconds``: per stage (decode, pre, infer, post, sink);
- ``edgeseg_sink_errors_total`` per sink, and the process's own ``process_resident_memory_bytes``,
  ``process_open_fds``, CPU seconds... (prometheus-client's process collector).

Served on ``host`` (127.0.0.1 unless asked: metrics name the cameras) at ``/metrics``.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from edgeseg.errors import EdgesegError
from edgeseg.streaming.stats import StreamStats

log = logging.getLogger("edgeseg.stream")
COUNTERS = {
    "frames_in": "frames read from the source",
    "frames_out": "frames whose labels reached the sinks",
    "frames_dropped": "frames dropped (realtime mode keeps only the newest)",
    "frames_failed": "frames that could not be read or processed",
    "reconnects": "times the source was reopened after losing its feed",
}


class StreamCollector:
    """Turns a StreamStats snapshot into metric families (prometheus-client's collector API)."""

    def __init__(self, stats: StreamStats, model: str, backend: str) -> None:
        self.stats, self.const = stats, [model, backend]

    def collect(self):
        snap = self.stats.snapshot()
        labels = ["model", "backend", "source"]
        families = {
            k: CounterMetricFamily(f"edgeseg_{k}", doc, labels=labels)
            for k, doc in COUNTERS.items()
        }
        outage = CounterMetricFamily(
            "edgeseg_outage_seconds", "time without frames while reconnecting", labels=labels
        )
        fps = GaugeMetricFamily("edgeseg_fps", "outputs a second over the last 5 s", labels=labels)
        age = GaugeMetricFamily(
            "edgeseg_newest_frame_age_seconds",
            "time since the newest frame was read",
            labels=labels,
        )
        up = GaugeMetricFamily("edgeseg_source_up", "1 while the source delivers", labels=labels)
        confidence = GaugeMetricFamily(
            "edgeseg_mean_confidence",
            "mean per-pixel confidence of the last 30 frames out (0-1)",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "edgeseg_latency_seconds", "capture to labels", labels=labels
        )
        for s in snap["sources"]:
            key = [*self.const, s["name"]]
            for k, family in families.items():
                family.add_metric(key, s[k])
            outage.add_metric(key, s["outage_s"])
            fps.add_metric(key, s["fps"])
            if s["age_s"] is not None:
                age.add_metric(key, s["age_s"])
            up.add_metric(key, 1.0 if s["state"] == "running" else 0.0)
            if s["confidence"] is not None:
                confidence.add_metric(key, s["confidence"])
            buckets, total = s["latency"]
            latency.add_metric(key, buckets, total)
        yield from families.values()
        yield from (outage, fps, age, up, latency)
        if confidence.samples:
            yield confidence
        yield from self._stages(snap)

    def _stages(self, snap: dict):
        stage = HistogramMetricFamily(
            "edgeseg_stage_seconds",
            "time per frame in each stage",
            labels=["model", "backend", "stage"],
        )
        for name, (buckets, total) in snap["stages"].items():
            stage.add_metric([*self.const, name], buckets, total)
        sinks = CounterMetricFamily(
            "edgeseg_sink_errors", "failed writes per sink", labels=["model", "backend", "sink"]
        )
        for name, n in snap["sink_errors"].items():
            sinks.add_metric([*self.const, name], n)
        yield stage
        yield sinks


class MetricsServer:
    """Serves ``stats`` at ``http://host:port/metrics`` until :meth:`close` (port 0: any free
    one; :attr:`port` says which)."""

    def __init__(
        self, stats: StreamStats, port: int, host: str = "127.0.0.1", *, model: str, backend: str
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StreamCollector(stats, model, backend))
        ProcessCollector(registry=self.registry)
        try:
            self.httpd, self.thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise EdgesegError(
                f"cannot serve metrics on {host}:{port} ({e.strerror}): pick another "
                "--metrics-port, or stop what uses it"
            ) from None
        self.host, self.port = host, self.httpd.server_address[1]
        log.info("metrics at http://%s:%d/metrics", host, self.port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
