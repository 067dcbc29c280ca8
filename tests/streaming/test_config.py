"""StreamConfig reaches behaviour whole: every field the CLI parses is used by the run (not only
validated), and the settings that were once dropped (--stall-timeout) act."""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from edgeseg.data.synthetic import write_clip
from edgeseg.streaming import StreamConfig, StreamPipeline
from edgeseg.streaming.frame import Source

# Fields a headless 2-core test cannot set to another value, each with where its effect is shown.
NOT_WALKED = {
    "display": "needs a screen: tests/test_cli.py (one-line error without a display)",
    "camera": "needs /dev/video*: tests/streaming/test_stream.py (bad sources are one error)",
    "device": "cuda needs a GPU: tests/runtime/test_gpu_pipeline.py",
    "precision": "fp16 needs a GPU: tests/runtime/test_gpu_pipeline.py",
    "cuda_graph": "needs a GPU: tests/runtime/test_tensorrt_backend.py (fake GPU)",
    "compile": "torch.compile of a .pt: tests/bench/test_bench.py",
    "max_sink_errors": "read when a sink fails: tests/streaming/test_stream_reliability.py",
}


def test_every_stream_setting_reaches_the_run_not_only_its_check(tiny_onnx, tmp_path, monkeypatch):
    """Every field set to a non-default value, then ``edgeseg stream`` runs; a field that
    nothing but ``check()`` (validation) reads has been dropped on its way (as --stall-timeout
    once was)."""
    from edgeseg.cli import main

    clip = write_clip(tmp_path / "clip.mp4", 8, (96, 160), fps=25)
    argv = ["stream", "--model", str(tiny_onnx), "--source", str(clip), "--source", str(clip),
            "--mode", "every-frame", "--record", str(tmp_path / "o.mp4"), "--record-segment",
            "5", "--save-masks", str(tmp_path / "m"), "--save-masks-max", "50", "--report",
            str(tmp_path / "r.json"), "--metrics-port", "0", "--metrics-host", "127.0.0.2",
            "--alpha", "0.3", "--smooth", "0.5", "--max-frames", "6", "--duration", "60",
            "--reconnect", "--rtsp-transport", "udp", "--reader", "ffmpeg", "--stall-timeout",
            "30", "--backend", "ort", "--batch", "3", "--batch-wait", "20", "--infer-workers", "1",
            "--smooth-cut", "0.5", "--backoff", "0.1", "0.2", "--open-timeout", "20",
            "--stop-timeout", "7", "--queue-size", "3", "--kernel-threads", "2",
            "--no-rebuild", "--confidence", "--save-confidence", str(tmp_path / "c"),
            "--min-confidence", "0.2"]  # fmt: skip
    fields = {f.name for f in dataclasses.fields(StreamConfig)}
    flags = {a[2:].replace("-", "_").removeprefix("no_") for a in argv if a.startswith("--")}
    assert fields - flags == set(NOT_WALKED), "walk the new setting, or say where it acts"

    reads: set[str] = set()
    recording = threading.local()
    get = object.__getattribute__

    def recorded(self, name):
        if name in fields and not getattr(recording, "off", False):
            reads.add(name)
        return get(self, name)

    def check(self, *a, **k):  # validation reads every field: it does not count
        recording.off = True
        try:
            return real_check(self, *a, **k)
        finally:
            recording.off = False

    real_check = StreamConfig.check
    monkeypatch.setattr(StreamConfig, "__getattribute__", recorded)
    monkeypatch.setattr(StreamConfig, "check", check)
    assert main(argv) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["frames_out"] == 12
    assert all(0 < src["mean_confidence"] <= 1 for src in report["sources"])
    assert len(list((tmp_path / "c").glob("run-*/*.png"))) == 12
    assert fields - reads - set(NOT_WALKED) == set()


class Stalls(Source):
    """A live source whose second read never returns."""

    live, name = True, "stalls"

    def __init__(self, frame_source: Source) -> None:
        self.inner, self.reads = frame_source, 0

    def read(self):
        self.reads += 1
        if self.reads > 1:
            time.sleep(3600)
        return self.inner.read()


@pytest.mark.parametrize("stall_timeout", [0.5, 0])
def test_stall_timeout_decides_when_a_stuck_live_source_is_dead(tiny_onnx, stall_timeout):
    """0.5 s: the watchdog fails the source quickly (the default for live sources is 5 s);
    0: never, so only the duration ends the run."""
    from edgeseg.runtime import Segmenter
    from edgeseg.streaming.sources import SyntheticSource

    seg = Segmenter(tiny_onnx)
    src = Stalls(SyntheticSource((96, 160), fps=0))
    pipe = StreamPipeline(
        seg, [src], sinks=[], stall_timeout=stall_timeout, duration=3.0, stop_timeout=0.2
    )
    t0 = time.perf_counter()
    rep = pipe.run()
    seconds = time.perf_counter() - t0
    state = rep["sources"][0]["state"]
    if stall_timeout:
        assert state == "failed" and "stalled" in rep["sources"][0]["errors"][0]
        assert seconds < 2.5  # failed by the watchdog, long before the duration
    else:
        assert state != "failed" and seconds >= 3.0  # nothing but the duration stopped it
