"""A stream that runs for days: it never hangs, never exits 0 on a failure, never shows a camera
password, never loses finished footage, and refuses a malformed model before it can do harm."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeseg._io import atomic_path
from edgeseg._redact import redact
from edgeseg.data.synthetic import render_scene, write_clip
from edgeseg.errors import EdgesegError
from edgeseg.runtime import Segmenter
from edgeseg.streaming.pipeline import EXIT_INFERENCE, EXIT_SINK, EXIT_SOURCE, StreamPipeline
from edgeseg.streaming.sinks import CallbackSink, MaskSink, Sink, SinkFailed, VideoSink
from edgeseg.streaming.sources import Frame, Source, open_source


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip") / "clip.mp4", 24, (96, 160), fps=25)


@pytest.fixture(scope="module")
def seg(tiny_onnx):
    return Segmenter(tiny_onnx)


def cli(*args, env=None, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "edgeseg", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )


WAIT_S = 60  # the most a test waits for something that takes seconds at most: a hang fails


def _finishes(run) -> dict:
    """``run()``'s result, or a failure when it has not returned after ``WAIT_S`` (a hang)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(run()), daemon=True)
    t.start()
    t.join(WAIT_S)
    assert not t.is_alive(), f"still running after {WAIT_S} s: it hangs"
    return out[0]


def _metric(url: str, name: str) -> float:
    """The value of one sample of a stream's Prometheus metrics (one source: no labels needed)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise KeyError(name)


def _silent_after_frames(proc, frames: int) -> None:
    """Wait (at most ``WAIT_S``) until a CLI stream run with ``--metrics-port 0`` has read
    ``frames`` frames and its source has then gone quiet: the capture now waits in a read."""
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()
    deadline, url = time.monotonic() + WAIT_S, None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "".join(lines)
        url = url or next((ln.split()[-1] for ln in lines if "metrics at" in ln), None)
        try:
            read = url and _metric(url, "edgeseg_frames_in_total") >= frames
            if read and _metric(url, "edgeseg_newest_frame_age_seconds") >= 1.0:
                return
        except (OSError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"no quiet source after {frames} frames within {WAIT_S} s: {lines}")


def _images(folder: Path, n: int, corrupt: int | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        path = folder / f"{i:03d}.jpg"
        if i == corrupt:
            path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        else:
            cv2.imwrite(str(path), render_scene(i, (96, 160))[0][..., ::-1])
    return folder


# ---------------------------------------------------------------------------- 1. no hang


def test_an_output_stage_that_raises_stops_the_run_instead_of_hanging(seg, clip, monkeypatch):
    """every-frame mode: capture and inference would block in put() forever once output died."""

    def broken(*a, **k):
        raise ValueError("palette entry [0, 0]")

    monkeypatch.setattr(seg, "finish", broken)
    pipe = StreamPipeline(seg, [str(clip)] * 2, sinks=[], mode="every-frame", queue_size=2)
    rep = _finishes(pipe.run)
    assert rep["exit_code"] == EXIT_INFERENCE and "palette entry" in rep["errors"][0]
    assert rep["frames_out"] == 0 and rep["frames_in"] > 0  # and every frame accounted for


def test_a_planted_palette_is_refused_when_the_model_loads(tiny_onnx, tmp_path):
    import onnx

    from edgeseg.spec import METADATA_KEY

    proto = onnx.load(str(tiny_onnx))
    meta = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    spec = json.loads(meta.value)
    spec["palette"][0] = [0, 0]
    meta.value = json.dumps(spec)
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    with pytest.raises(EdgesegError, match=r"bad.onnx: model spec field palette"):
        Segmenter(bad)


# ---------------------------------------------------------------------------- 2. exit status


def test_a_corrupt_image_is_one_failed_frame_and_the_folder_goes_on(seg, tmp_path):
    folder = _images(tmp_path / "imgs", 6, corrupt=2)
    got = []
    rep = StreamPipeline(seg, [str(folder)], sinks=[CallbackSink(got.append)]).run()
    assert [r.index for r in got] == [0, 1, 3, 4, 5]
    assert rep["frames_failed"] == 1 and "002.jpg" in rep["sources"][0]["errors"][0]
    assert rep["exit_code"] == EXIT_SOURCE


def test_the_cli_exits_non_zero_on_a_corrupt_image_with_one_line_per_error(tiny_onnx, tmp_path):
    folder = _images(tmp_path / "imgs", 4, corrupt=1)
    proc = cli("stream", "--model", tiny_onnx, "--source", folder, "--report", tmp_path / "r.json")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_SOURCE, err
    assert "cannot read image" in err and "001.jpg" in err and "Traceback" not in err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["frames_out"] == 3 and rep["frames_failed"] == 1


class FailsAfter:
    """A backend that runs ``n`` batches, then runs out of memory."""

    def __init__(self, backend, n: int) -> None:
        self.backend, self.n = backend, n

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def infer(self, x):
        self.n -= 1
        if self.n < 0:
            raise RuntimeError("CUDA out of memory")
        return self.backend.infer(x)


def test_inference_that_fails_mid_run_stops_it_and_says_so(seg, clip):
    pipe = StreamPipeline(seg, [str(clip)], sinks=[], infer_workers=1)
    pipe.infer_backends = [FailsAfter(pipe.infer_backends[0], 5)]
    pipe.warmup = lambda: None
    rep = pipe.run()
    assert rep["exit_code"] == EXIT_INFERENCE
    assert any("inference failed: RuntimeError: CUDA out of memory" in e for e in rep["errors"])
    assert rep["frames_out"] <= 5 and rep["frames_failed"] >= 1


def test_the_iterator_raises_when_the_stream_failed(seg, tmp_path):
    folder = _images(tmp_path / "imgs", 3, corrupt=0)
    with pytest.raises(EdgesegError, match="the stream failed: .*cannot read image"):
        list(seg.stream(str(folder)))


# ---------------------------------------------------------------------------- 3. credentials


@pytest.mark.parametrize(
    "text,secret",
    [
        ("rtsp://user:secret@127.0.0.1:1/x", "secret"),
        ("http://cam.local/video?user=admin&pwd=secret", "secret"),
        ("rtspsrc location=rtsp://u:secret@cam/s user-id=admin user-pw=secret ! appsink", "secret"),
        ("cannot open rtsp://admin@cam/s?token=secret", "secret"),
    ],
)
def test_redact_removes_credentials(text, secret):
    assert secret not in redact(text) and "***" in redact(text)


def test_source_names_and_errors_carry_no_credentials():
    for spec in ("rtsp://user:secret@127.0.0.1:1/x", "http://127.0.0.1:1/x?user=u&pwd=secret"):
        with pytest.raises(EdgesegError) as e:
            open_source(spec)
        assert "secret" not in str(e.value) and "127.0.0.1" in str(e.value)


def test_no_credentials_in_any_output_of_a_failing_stream(tiny_onnx, tmp_path):
    url = "rtsp://user:secret@127.0.0.1:1/x"
    proc = cli("stream", "--model", tiny_onnx, "--source", url)  # the camera is down
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "secret" not in out + err and "127.0.0.1" in err
    report = tmp_path / "r.json"
    proc = cli(
        "stream",
        "--model",
        tiny_onnx,
        "--source",
        url,
        "--reconnect",
        "--duration",
        "4",
        "--report",
        report,
        "--record",
        tmp_path / "o.mp4",
    )
    out, err = proc.communicate(timeout=120)
    text = out + err + report.read_text()
    assert "secret" not in text and "user" not in json.loads(report.read_text())["source"]
    assert json.loads(report.read_text())["sources"][0]["state"] in ("reconnecting", "stopped")


# ---------------------------------------------------------------------------- 4. blocked reads


class Blocking(Source):
    """A live source whose read never returns after ``n`` frames (a silent network drop)."""

    live = True
    fps = 25.0

    def __init__(self, n: int = 3) -> None:
        self.n, self.i, self.name = n, 0, "blocking"
        self.released = threading.Event()
        self.closed = False

    @property
    def spec(self) -> str:
        return "synthetic:160x96@50"  # what a reopen opens: a working feed

    def read(self):
        if self.i >= self.n:
            self.released.wait()  # forever, in this test
            return None
        self.i += 1
        return Frame(
            render_scene(self.i, (96, 160))[0][..., ::-1].copy(), self.i, time.perf_counter()
        )

    def close(self) -> None:
        self.closed = True


def test_a_stalled_source_is_reopened_by_the_watchdog(seg):
    src = Blocking()
    got = []
    pipe = StreamPipeline(
        seg,
        [src],
        sinks=[CallbackSink(got.append)],
        reconnect=True,
        stall_timeout=0.5,
        max_frames=20,
        backoff=(0.05, 0.1),
    )
    rep = pipe.run()
    assert len(got) + rep["frames_dropped"] == 20 and rep["exit_code"] == 0
    assert rep["reconnects"] >= 1 or rep["sources"][0]["outage_s"] > 0
    assert any("stalled" in e for e in rep["sources"][0]["errors"])
    assert not src.closed  # never released under a thread still inside its read()
    assert [r.index for r in got] == sorted(r.index for r in got)
    src.released.set()


def test_a_stalled_source_without_reconnect_fails_the_run_promptly(seg):
    src = Blocking()
    # the read never returns: only the watchdog ends this run
    rep = _finishes(StreamPipeline(seg, [src], sinks=[], stall_timeout=0.5, stop_timeout=1.0).run)
    assert rep["exit_code"] == EXIT_SOURCE and rep["sources"][0]["state"] == "failed"
    assert "stalled (reading took over 0.5 s)" in rep["sources"][0]["errors"][0]
    src.released.set()


def _mjpeg_fifo(path: Path, frames: int) -> threading.Event:
    """A named pipe fed ``frames`` 960x540 JPEG frames (enough for FFmpeg's probe), then kept
    open and silent: the next read blocks."""
    os.mkfifo(path)
    done = threading.Event()
    jpegs = [cv2.imencode(".jpg", render_scene(i, (540, 960))[0])[1].tobytes() for i in range(8)]

    def feed():
        with open(path, "wb") as f:
            for i in range(frames):
                f.write(jpegs[i % len(jpegs)])
            f.flush()
            done.wait(60)

    threading.Thread(target=feed, daemon=True).start()
    return done


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_sigterm_during_a_blocked_read_exits_with_a_report(tiny_onnx, tmp_path):
    fifo = tmp_path / "feed.mjpeg"
    done = _mjpeg_fifo(fifo, 200)
    report = tmp_path / "r.json"
    proc = cli(
        "stream", "--model", tiny_onnx, "--source", fifo, "--report", report, "--stall-timeout",
        "0", "--metrics-port", "0",
    )  # fmt: skip
    try:
        _silent_after_frames(proc, 100)  # the frames are through; the read waits on the pipe
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=WAIT_S)  # the stages get --stop-timeout (5 s); a hang fails here
    finally:
        done.set()
        proc.kill()
    assert proc.returncode == 0
    rep = json.loads(report.read_text())
    assert rep["frames_in"] == rep["frames_out"] + rep["frames_dropped"] + rep["frames_failed"]
    assert rep["frames_out"] >= 100 and any("left open" in e for e in rep["errors"])


def test_a_second_signal_forces_the_exit(tiny_onnx, tmp_path):
    fifo = tmp_path / "feed.mjpeg"
    done = _mjpeg_fifo(fifo, 200)
    proc = cli(
        "stream", "--model", tiny_onnx, "--source", fifo, "--report", tmp_path / "r.json",
        "--stall-timeout", "0", "--metrics-port", "0",
    )  # fmt: skip
    try:
        _silent_after_frames(proc, 1)  # a clean stop now waits --stop-timeout on the read
        # two kinds of signal, as two of one kind may merge into one delivery: SIGINT (the
        # lower number) is handled first and begins the clean stop, SIGTERM cuts it short
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # usually lands during the clean stop's wait; either way it is second
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=WAIT_S)
    finally:
        done.set()
        proc.kill()
    # the forced exit's status (a clean stop exits with the report's code, 0 here)
    assert proc.returncode == 128 + signal.SIGTERM
    assert json.loads((tmp_path / "r.json").read_text())["frames_in"] >= 1


# ---------------------------------------------------------------------------- 6. sinks


class AlwaysFails(Sink):
    name = "broken"

    def write(self, result) -> None:
        raise OSError("no space left on device")


class SometimesFails(Sink):
    name = "flaky"

    def write(self, result) -> None:
        if result.index % 3 == 0:
            raise OSError("timeout")


def test_each_sink_counts_its_own_failures(seg, clip):
    got = []
    sinks = [SometimesFails(), AlwaysFails(), CallbackSink(got.append)]
    pipe = StreamPipeline(seg, [str(clip)] * 3, sinks=sinks, max_sink_errors=25)
    rep = pipe.run()
    assert rep["sinks_disabled"] == ["broken"] and rep["sink_errors"]["broken"] == 25
    assert rep["sink_errors"]["flaky"] == 24 and len(got) == 72  # never 25 in a row: never disabled
    assert rep["exit_code"] == EXIT_SINK and any("sink broken disabled" in e for e in rep["errors"])


# ---------------------------------------------------------------------------- 7. footage


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


def test_a_hard_kill_loses_at_most_the_last_segment(tiny_onnx, tmp_path):
    out = tmp_path / "rec.mp4"
    proc = cli(
        "stream",
        "--model",
        tiny_onnx,
        "--source",
        "synthetic:160x96@25",
        "--record",
        out,
        "--record-segment",
        "0.05",
    )  # a segment every 3 s of video
    deadline = time.monotonic() + WAIT_S
    while len(list(tmp_path.glob("rec.*.mp4"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)  # until two segments are finished (renamed into place)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    segments = sorted(tmp_path.glob("rec.*.mp4"))
    assert len(segments) >= 2, list(tmp_path.iterdir())
    assert all(_frames(s) == 75 for s in segments)  # every finished segment plays, whole
    assert len(list(tmp_path.glob(".rec.*partial.mp4"))) == 1  # only the one being written
    # the next run removes what the killed one left
    VideoSink(out, segment_s=1).write(_fake_result())
    assert not list(tmp_path.glob(f".rec.*pid{proc.pid}.partial.mp4"))


def _fake_result(sid: int = 0, index: int = 0, hw=(96, 160)):
    from types import SimpleNamespace

    img = np.zeros((*hw, 3), np.uint8)
    return SimpleNamespace(source_id=sid, index=index, vis=img, labels=img[..., 0], frame=img)


def test_recording_never_overwrites_and_stops_when_the_disk_is_full(tmp_path, monkeypatch):
    (tmp_path / "o.mp4").write_bytes(b"yesterday's footage")
    sink = VideoSink(tmp_path / "o.mp4")
    for i in range(5):
        sink.write(_fake_result(index=i))
    sink.close()
    assert (tmp_path / "o.mp4").read_bytes() == b"yesterday's footage"
    assert _frames(tmp_path / "o-1.mp4") == 5
    import shutil

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10 * 2**20))
    with pytest.raises(SinkFailed, match="disk full"):
        VideoSink(tmp_path / "p.mp4").write(_fake_result())


def test_a_frame_size_change_starts_a_new_file(tmp_path):
    sink = VideoSink(tmp_path / "o.mp4")
    sink.write(_fake_result(hw=(96, 160)))
    sink.write(_fake_result(hw=(120, 200)))
    sink.close()
    assert sorted(p.name for p in tmp_path.glob("*.mp4")) == ["o.001.mp4", "o.mp4"]


def test_masks_go_to_a_folder_per_run_and_respect_their_cap(tmp_path):
    a, b = MaskSink(tmp_path, max_files=3), MaskSink(tmp_path)
    b.run += "-second"  # two runs of a service, the same second
    for i in range(5):
        a.write(_fake_result(index=i))
        b.write(_fake_result(index=i))
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(runs) == 2
    assert sorted(p.name for p in a.folder(0).glob("*.png")) == [
        "000002.png",
        "000003.png",
        "000004.png",
    ]
    assert len(list(b.folder(0).glob("*.png"))) == 5


def test_masks_make_their_folder_once_and_again_if_it_is_removed(tmp_path, monkeypatch):
    made = []
    mkdir = Path.mkdir
    monkeypatch.setattr(Path, "mkdir", lambda p, *a, **k: made.append(p) or mkdir(p, *a, **k))
    sink = MaskSink(tmp_path)
    for i in range(4):  # no syscall a frame that can be avoided
        sink.write(_fake_result(index=i))
    assert made == [sink.folder(0)]
    shutil.rmtree(sink.folder(0))  # a clean-up job took it while streaming
    sink.write(_fake_result(index=4))
    assert [p.name for p in sink.folder(0).iterdir()] == ["000004.png"]


# ---------------------------------------------------------------------------- 8. atomic writes


def test_atomic_writes_are_flushed_and_leave_nothing_behind(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    monkeypatch.setattr(os, "umask", lambda *a: pytest.fail("os.umask is process-wide"))
    dead = tmp_path / ".r.json.pid999999.x1.tmp.json"  # left by a crashed process
    dead.write_text("{")
    with atomic_path(tmp_path / "r.json") as tmp:
        tmp.write_text("{}")
    assert (tmp_path / "r.json").read_text() == "{}" and len(
        synced
    ) == 2  # the file, then the folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    assert oct((tmp_path / "r.json").stat().st_mode & 0o777) != "0o600"  # as a plain open() would


# ---------------------------------------------------------------------------- 9. the rest


def test_what_exists_on_disk_opens_as_a_file_or_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _images(tmp_path / "0", 2)
    assert type(open_source("0")).__name__ == "ImageFolderSource"
    clip = write_clip(tmp_path / "a!b.mp4", 3, (64, 96))
    src = open_source(str(clip))
    assert src.kind == "file" and not src.live


def test_sources_are_closed_when_the_pipeline_cannot_be_built(seg, clip):
    src = open_source(str(clip))
    with pytest.raises(EdgesegError, match="infer_workers"):
        StreamPipeline(seg, [src], infer_workers=0)
    assert src.cap is None


def test_the_stats_a_display_holds_are_the_ones_that_count(seg, clip):
    pipe = StreamPipeline(seg, [str(clip)], sinks=[])
    held = pipe.stats
    rep = pipe.run()
    assert held is pipe.stats and held.totals()["frames_out"] == rep["frames_out"] == 24


def test_predict_never_overwrites_its_inputs_and_keeps_same_named_images_apart(tiny_onnx, tmp_path):
    folder = _images(tmp_path / "imgs", 2)
    cv2.imwrite(str(folder / "000.png"), render_scene(9, (96, 160))[0])
    proc = cli("predict", tiny_onnx, folder, "--out", tmp_path / "out")
    proc.communicate(timeout=120)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "000_jpg.png",
        "000_png.png",
        "001.png",
    ]
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    cv2.imwrite(str(pngs / "a.png"), render_scene(9, (96, 160))[0])
    before = (pngs / "a.png").read_bytes()
    proc = cli("predict", tiny_onnx, pngs, "--out", pngs)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "would overwrite the input image a.png" in err
    assert (pngs / "a.png").read_bytes() == before


def test_malformed_engine_sidecars_and_checkpoints_are_one_clear_error(tmp_path):
    import torch

    from edgeseg.models.checkpoint import read_checkpoint
    from edgeseg.runtime.engine_files import SIDECAR_FORMAT, read_sidecar

    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    Path(f"{engine}.json").write_text(json.dumps({"format": SIDECAR_FORMAT}))
    with pytest.raises(EdgesegError, match="lacks its spec or build record"):
        read_sidecar(engine)
    torch.save({"format": "edgeseg-checkpoint-v1", "arch": "mbv3_unet_small"}, tmp_path / "x.pt")
    with pytest.raises(
        EdgesegError, match="incomplete edgeseg checkpoint \\(no valid spec, state_dict\\)"
    ):
        read_checkpoint(tmp_path / "x.pt")


def test_torch_pin_excludes_the_weights_only_bypass():
    tomllib = pytest.importorskip("tomllib")
    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "torch>=2.6" in meta["project"]["dependencies"]
