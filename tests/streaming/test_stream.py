"""The stream pipeline: ordering, drops, reconnects, failing sinks, signals, bad sources."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from edgeseg.data.synthetic import write_clip
from edgeseg.errors import EdgesegError
from edgeseg.runtime import Segmenter, kernels
from edgeseg.streaming.pipeline import StreamPipeline
from edgeseg.streaming.sinks import CallbackSink, MaskSink, Sink, VideoSink
from edgeseg.streaming.sources import CaptureSource, SyntheticSource, open_source
from edgeseg.streaming.stats import STAGES

WAIT_S = 60  # the most a test waits for something that takes well under a second: a hang fails

REPORT_KEYS = {
    "frames_in",
    "frames_out",
    "frames_dropped",
    "frames_failed",
    "reconnects",
    "outage_s",
    "fps",
    "latency_ms",
    "stages_ms",
    "source",
    "model",
    "backend",
    "sink_errors",
    "sinks_disabled",
    "errors",
    "sources",
    "exit_code",
}
SOURCE_KEYS = {
    "name",
    "mode",
    "reader",
    "state",
    "frames_in",
    "frames_out",
    "frames_dropped",
    "frames_failed",
    "reconnects",
    "outage_s",
    "error_count",
    "errors",
    "outages",
    "mean_confidence",  # null unless the stream computes confidence
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 24, (96, 160), fps=25)


@pytest.fixture(scope="module")
def seg(tiny_onnx):
    return Segmenter(tiny_onnx)


def collect(results):
    def fn(res):
        results.append(res)

    return CallbackSink(fn)


@pytest.mark.parametrize("workers", [1, "auto", 3])
def test_every_frame_mode_loses_nothing_and_keeps_order(seg, clip, tmp_path, workers):
    got = []
    pipe = StreamPipeline(
        seg, [str(clip)], sinks=[collect(got), MaskSink(tmp_path / "m")], infer_workers=workers
    )
    assert pipe.mode == "every-frame"  # the default for files
    expected = {1: 1, 3: 3}.get(
        workers, 2 if (os.cpu_count() or 1) >= 2 else 1
    )  # auto: 2 ORT sessions on 2+ cores
    assert len(pipe.infer_backends) == expected
    rep = pipe.run()
    assert [r.index for r in got] == list(range(24))
    assert rep["frames_in"] == rep["frames_out"] == 24 and rep["frames_dropped"] == 0
    assert len(list((tmp_path / "m").glob("run-*/*.png"))) == 24  # a folder per run
    # labels are those of a plain Segmenter call on the same decoded frame
    cap = cv2.VideoCapture(str(clip))
    for _ in range(5):
        ok, frame = cap.read()
    np.testing.assert_array_equal(got[4].labels, seg(frame).labels)


class SlowSink(Sink):
    name = "slow"

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def write(self, result) -> None:
        time.sleep(self.delay)


class Captured(SyntheticSource):
    """A synthetic camera that says when its last frame has been captured."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.done = threading.Event()

    def read(self):
        frame = super().read()
        if frame is None or self.index == self.max_frames:
            self.done.set()
        return frame


class StalledSink(Sink):
    """Holds its first frame until ``release`` is set (a consumer far slower than the camera)."""

    name = "stalled"

    def __init__(self, release: threading.Event) -> None:
        self.release, self.indices = release, []

    def write(self, result) -> None:
        self.indices.append(result.index)
        if len(self.indices) == 1:
            assert self.release.wait(WAIT_S), "the camera never finished"


@pytest.mark.parametrize("workers", [1, 2])
def test_realtime_mode_drops_and_counts_when_the_consumer_is_slow(seg, workers):
    got = []
    src = Captured((96, 160), fps=200, max_frames=120)
    stalled = StalledSink(src.done)
    pipe = StreamPipeline(
        seg, [src], sinks=[collect(got), stalled], mode="realtime", infer_workers=workers
    )
    rep = pipe.run()
    assert rep["frames_in"] == 120
    assert rep["frames_out"] + rep["frames_dropped"] == rep["frames_in"]
    idx = [r.index for r in got]
    assert idx == stalled.indices and len(idx) == rep["frames_out"]
    assert idx == sorted(idx)  # newest wins, never older after newer
    # never falls behind: once the consumer is back (all 120 frames captured while it held the
    # first), it gets the newest frames, not the backlog
    assert idx[-1] == 119 and len(idx) <= 2 + workers
    assert rep["frames_dropped"] == 120 - len(idx)


class FirstCallSlow:
    """A backend whose first call pays a one-off cost, as CUDA and ONNX Runtime first calls do;
    ``events`` logs its calls beside the source's reads."""

    def __init__(self, backend, cost_s: float, events: list) -> None:
        self.backend, self.cost_s, self.calls, self.events = backend, cost_s, 0, events

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def infer(self, x):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.cost_s)
            self.events.append("one-off cost paid")
        return self.backend.infer(x)


class LoggedSource(SyntheticSource):
    def __init__(self, events: list, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def read(self):
        self.events.append("read")
        return super().read()


def test_one_off_costs_are_paid_before_capture_starts(seg):
    events: list[str] = []
    src = LoggedSource(events, (96, 160), fps=25, max_frames=20)
    pipe = StreamPipeline(seg, [src], sinks=[], mode="realtime", infer_workers=1)
    pipe.infer_backends = [FirstCallSlow(b, 0.8, events) for b in pipe.infer_backends]
    rep = pipe.run()
    assert (
        pipe.infer_backends[0].calls == rep["frames_out"] + 1
    )  # the warm-up call, then every frame
    # paid on the first real frame, the cost would hold up live frames (and drop them): it is
    # paid before the camera is first read
    assert events[0] == "one-off cost paid" and events.count("read") >= 20
    assert rep["frames_out"] + rep["frames_dropped"] == 20


class Broken:
    def __init__(self, backend) -> None:
        self.backend = backend

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def infer(self, x):
        raise RuntimeError("CUDA out of memory")


def test_a_failed_warm_up_still_closes_sources_and_sinks(seg, clip, tmp_path):
    video = VideoSink(tmp_path / "out.mp4")
    pipe = StreamPipeline(seg, [str(clip)], sinks=[video], infer_workers=1)
    pipe.infer_backends = [Broken(b) for b in pipe.infer_backends]
    src = pipe.sources[0]
    with pytest.raises(RuntimeError, match="out of memory"):
        pipe.run()
    assert src.cap is None  # released
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no half-written temp file


def test_the_iterator_raises_what_stopped_the_pipeline(seg, clip, monkeypatch):
    def fail(self):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(StreamPipeline, "warmup", fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        list(seg.stream(str(clip)))


def test_ffmpeg_sources_decode_on_one_thread_where_the_pipeline_fills_the_cores(clip, monkeypatch):
    threads = lambda src: src.cap.get(cv2.CAP_PROP_N_THREADS)  # noqa: E731
    assert threads(CaptureSource(str(clip), "url", "live")) == 1  # live: no frame-threading delay
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert threads(open_source(str(clip))) == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert threads(open_source(str(clip))) == threads(
        SimpleNamespace(cap=cv2.VideoCapture(str(clip)))
    )  # FFmpeg's choice
    assert threads(CaptureSource(str(clip), "url", "live")) == 1


@pytest.mark.skipif(
    kernels._cpu is None or kernels._cpu.get_num_threads() < 2, reason="needs OpenMP on 2+ cores"
)
def test_every_stage_runs_the_kernels_on_one_thread(seg, clip):
    # The stages run side by side on the cores: an OpenMP team inside one of them spins on cores
    # busy with the others (the capture thread once did this: preprocessing x8, inference x1.3
    # slower in the stream, benchmarks/RESULTS.md). Capture, inference and output each count.
    seen: dict[str, set[int]] = {}

    class Recording(SyntheticSource):
        def read(self):
            seen.setdefault("capture", set()).add(kernels._cpu.get_num_threads())
            return super().read()

    def write(res):
        seen.setdefault("output", set()).add(kernels._cpu.get_num_threads())

    pipe = StreamPipeline(
        seg, [Recording((96, 160), fps=0, max_frames=6)], sinks=[CallbackSink(write)]
    )
    pipe.run()
    assert seen == {"capture": {1}, "output": {1}}
    assert kernels._cpu.get_num_threads() > 1  # the caller's own setting is left alone


def test_reconnects_a_live_source_that_dies(seg, clip):
    # A real OpenCV capture of a 24-frame file, treated as a live URL: at its end it "drops",
    # and the pipeline must reopen it (twice, to reach 60 frames).
    src = CaptureSource(str(clip), "url", "flaky")
    assert src.live
    pipe = StreamPipeline(
        seg, [src], sinks=[], mode="every-frame", max_frames=60, reconnect=True, backoff=(0.05, 0.1)
    )
    rep = pipe.run()
    assert rep["frames_out"] == 60 and rep["reconnects"] >= 2 and rep["exit_code"] == 0
    assert rep["sources"][0]["state"] == "ended"


def test_without_reconnect_a_dead_live_source_ends_the_stream(seg, clip):
    pipe = StreamPipeline(
        seg, [CaptureSource(str(clip), "url", "flaky")], sinks=[], mode="every-frame"
    )
    assert pipe.run()["frames_out"] == 24


class FlakySink(Sink):
    name = "flaky"

    def write(self, result) -> None:
        if result.index % 3 == 0:
            raise OSError("disk full")


def test_a_failing_sink_does_not_stop_the_stream(seg, clip, caplog):
    got = []
    pipe = StreamPipeline(seg, [str(clip)], sinks=[FlakySink(), collect(got)])
    rep = pipe.run()
    assert rep["frames_out"] == 24 and len(got) == 24
    assert rep["sink_errors"] == {"flaky": 8} and rep["exit_code"] == 0
    assert "disk full" in caplog.text


def test_report_has_exactly_the_documented_fields(seg, clip, tmp_path):
    pipe = StreamPipeline(
        seg,
        [str(clip), "synthetic:160x96@50"],
        sinks=[VideoSink(tmp_path / "o.mp4")],
        max_frames=10,
        mode="every-frame",
    )
    rep = pipe.run()
    assert set(rep) == REPORT_KEYS and all(set(s) == SOURCE_KEYS for s in rep["sources"])
    assert set(rep["latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert set(rep["stages_ms"]) == set(STAGES) and all(
        set(v) == {"p50", "p99"} for v in rep["stages_ms"].values()
    )
    assert rep["frames_out"] == 20  # two sources share one model
    assert rep["latency_ms"]["p50"] <= rep["latency_ms"]["p99"] <= rep["latency_ms"]["max"]
    for name in ("o_0.mp4", "o_1.mp4"):  # one recording per source, not both in one file
        cap = cv2.VideoCapture(str(tmp_path / name))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 10


def test_segmenter_stream_iterator(seg, clip):
    it = seg.stream(str(clip), overlay_alpha=0.4)
    first = [next(it) for _ in range(5)]
    it.close()  # leaving early stops the pipeline
    assert [r.index for r in first] == list(range(5))
    assert first[0].vis.shape == first[0].frame.shape and first[0].overlay(0.4) is first[0].vis
    assert [r.index for r in seg.stream(str(clip), max_frames=7)] == list(range(7))


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("nope.mp4", "source not found: nope.mp4"),
        ("7", "camera 7 is not there"),
        ("synthetic:axb", "bad synthetic source"),
        ("empty_dir", "holds no images"),
        ("corrupt.mp4", "cannot decode video"),
    ],
)
def test_bad_sources_are_one_clear_error(spec, msg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "corrupt.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(EdgesegError, match=msg):
        open_source(spec)


def run_cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "edgeseg", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_sigterm_leaves_a_playable_mp4_and_a_complete_report(tiny_onnx, tmp_path):
    out, rep = tmp_path / "live.mp4", tmp_path / "r.json"
    proc = run_cli(
        "stream",
        "--model",
        tiny_onnx,
        "--source",
        "synthetic:160x96@30",
        "--record",
        out,
        "--report",
        rep,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".live.mp4.pid*.partial.mp4")):
        time.sleep(0.2)
    time.sleep(1.5)  # some frames in
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    report = json.loads(rep.read_text())
    assert set(report) == REPORT_KEYS and report["frames_out"] > 5
    cap = cv2.VideoCapture(str(out))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == report["frames_out"]
    assert not list(tmp_path.glob(".live*partial*"))


def test_cli_bad_source_and_display_are_one_line(tiny_onnx, tmp_path):
    for args, msg in [
        (["--source", tmp_path / "missing.mp4"], "source not found"),
        (["--camera", "9"], "camera 9 is not there"),
        (["--source", "synthetic", "--display"], "--display refused"),
        (["--source", "synthetic", "--compile"], "--compile (torch.compile) needs a .pt"),
    ]:
        env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
        proc = run_cli("stream", "--model", tiny_onnx, *args, "--max-frames", "3", env=env)
        _, err = proc.communicate(timeout=120)
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and msg in lines[0], err


DASHCAM = (
    __import__("pathlib").Path(__file__).resolve().parents[3]
    / "shared/data/video/dashcam_960x540.mp4"
)


def _per_source(results):
    out: dict[int, list] = {}
    for r in results:
        out.setdefault(r.source_id, []).append(r)
    return out


@pytest.mark.parametrize("batch", [None, 3, 1])
def test_several_sources_batched_lose_nothing_keep_order_and_equal_single_runs(seg, clip, batch):
    """Every frame of every source out, each source in order, labels as a one-source run's."""
    got: list = []
    pipe = StreamPipeline(
        seg, [str(clip)] * 4, sinks=[collect(got)], mode="every-frame", batch=batch
    )
    assert pipe.batch == (1 if batch is None else batch)  # CPU default: single frames
    rep = pipe.run()
    alone: list = []
    StreamPipeline(seg, [str(clip)], sinks=[collect(alone)], mode="every-frame").run()
    assert rep["frames_out"] == 4 * 24 == rep["frames_in"]
    for sid, results in _per_source(got).items():
        assert [r.index for r in results] == list(range(24)), sid
        for r, a in zip(results, alone):
            np.testing.assert_array_equal(r.labels, a.labels)


@pytest.mark.skipif(not DASHCAM.is_file(), reason=f"needs the dash-cam clip at {DASHCAM}")
def test_four_dashcam_sources_batched_every_frame(seg):
    got: list = []
    pipe = StreamPipeline(
        seg, [str(DASHCAM)] * 4, sinks=[collect(got)], mode="every-frame", batch=4
    )
    rep = pipe.run()
    assert pipe.batch == 4 and rep["frames_out"] == 4 * 221
    per = _per_source(got)
    assert sorted(per) == [0, 1, 2, 3]
    assert all([r.index for r in rs] == list(range(221)) for rs in per.values())
    first = per[0]
    for rs in per.values():  # the same clip: the same labels, whichever batch a frame was in
        assert all(np.array_equal(a.labels, b.labels) for a, b in zip(rs, first))


def test_realtime_batches_keep_the_newest_frame_of_each_source(seg):
    got: list = []
    srcs = [SyntheticSource((96, 160), fps=50, max_frames=40, seed=i) for i in range(3)]
    pipe = StreamPipeline(seg, srcs, sinks=[collect(got)], mode="realtime", batch=3, batch_wait=5)
    rep = pipe.run()
    per = _per_source(got)
    assert sorted(per) == [0, 1, 2]  # no source starved by the others
    for rs in per.values():
        idx = [r.index for r in rs]
        assert idx == sorted(idx) and len(set(idx)) == len(idx)  # never older after newer
    assert rep["frames_out"] + rep["frames_dropped"] == rep["frames_in"] == 120


# ---------------------------------------------------------------------------- several cameras


def test_several_sources_record_and_save_masks_one_file_and_folder_each(seg, tmp_path):
    sources = ["synthetic:160x96@0", "synthetic:128x64@0"]
    sinks = [VideoSink(tmp_path / "cam{source}.mp4"), MaskSink(tmp_path / "masks{source}")]
    StreamPipeline(seg, sources, sinks=sinks, max_frames=6, mode="every-frame").run()
    for sid, (w, h) in enumerate([(160, 96), (128, 64)]):
        cap = cv2.VideoCapture(str(tmp_path / f"cam{sid}.mp4"))
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (w, h)
        masks = sorted((tmp_path / f"masks{sid}").glob("run-*/*.png"))
        assert len(masks) == 6
        assert cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED).shape == (h, w)


def test_the_mosaic_tiles_each_source_with_its_own_hud():
    from edgeseg.streaming.sinks import Mosaic

    mosaic = Mosaic(["cam a", "cam b", "cam c"], tile_hw=(90, 160))
    assert mosaic.canvas.shape == (180, 320, 3)  # 2 x 2 tiles for three sources
    waiting = mosaic.canvas[:90, :160].copy()
    red = np.zeros((270, 480, 3), np.uint8)
    red[..., 2] = 255
    mosaic.update(1, red, ["cam b", "25.0 FPS"])
    tile = mosaic.canvas[:90, 160:]
    assert (tile[60:, :, 2] == 255).mean() > 0.95  # the frame, scaled into its tile
    assert tile[:40].max() == 255 and (tile[:40, :, 0] > 200).any()  # white HUD text
    assert np.array_equal(mosaic.canvas[:90, :160], waiting)  # others untouched
    tall = np.full((300, 100, 3), 200, np.uint8)
    mosaic.update(2, tall, [])
    third = mosaic.canvas[90:, :160]
    assert third[:, :40].max() == 0 and third[:, 70:90].min() == 200  # letterboxed, aspect kept


def test_confidence_reaches_the_results_the_files_and_the_report(tiny_onnx, clip, tmp_path):
    seg = Segmenter(tiny_onnx, confidence=True)
    got = []
    saved = MaskSink(tmp_path / "conf", plane="confidence")
    pipe = StreamPipeline(seg, [str(clip)], sinks=[collect(got), saved], mode="every-frame")
    rep = pipe.run()
    assert len(got) == rep["frames_out"] == 24
    files = sorted((tmp_path / "conf").glob("run-*/*.png"))
    assert [f.name for f in files] == [f"{r.index:06d}.png" for r in got]
    for r, f in zip(got, files):
        assert r.confidence.shape == r.labels.shape
        np.testing.assert_array_equal(cv2.imread(str(f), cv2.IMREAD_UNCHANGED), r.confidence)
    means = [r.confidence.mean() / 255 for r in got]
    assert rep["sources"][0]["mean_confidence"] == pytest.approx(np.mean(means), abs=1e-4)
    plain = StreamPipeline(Segmenter(tiny_onnx), [str(clip)], sinks=[], max_frames=2).run()
    assert plain["sources"][0]["mean_confidence"] is None
