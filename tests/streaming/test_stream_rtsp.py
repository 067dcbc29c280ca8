"""``edgeseg stream`` against a real RTSP server (gst-rtsp-server) that dies and returns: frames
flow again after its return, at its new frame size, in order, counted in the report.
Every frame carries the server's send time (edgeseg.testing), which is how order and latency
are checked end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import cv2
import pytest

from edgeseg.runtime import Segmenter
from edgeseg.streaming.pipeline import StreamPipeline
from edgeseg.streaming.sinks import CallbackSink
from edgeseg.streaming.sources import open_source
from edgeseg.testing import read_stamp, stamp_age_ms

SIZES = [(480, 270), (320, 180), (400, 224)]  # served before, between and after two deaths
DOWN_S = [1.5, 3.5]  # how long the server stays dead each time (a long back-off misses one)
WAIT_S = 60  # the most a test waits for frames that take a second or two: a hang fails instead


def _watch(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    def run() -> None:
        for line in proc.stderr:
            lines.append(line)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _stamps(video: Path) -> tuple[tuple[int, int], list[int | None]]:
    cap = cv2.VideoCapture(str(video))
    stamps, shape = [], None
    while True:
        ok, image = cap.read()
        if not ok:
            break
        shape = image.shape[1::-1]
        stamps.append(read_stamp(image))
    cap.release()
    return shape, stamps


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _frames_in(lines: list[str]) -> int | None:
    """The stream's frames read so far, from its metrics endpoint (None: not serving yet)."""
    from prometheus_client.parser import text_string_to_metric_families

    url = next((ln.split()[-1] for ln in lines if "metrics at" in ln), None)
    if url is None:
        return None
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "edgeseg_frames_in_total":
                return int(sample.value)
    return None


def _wait_for_frames(proc: subprocess.Popen, lines: list[str], at_least: int) -> int:
    """Wait (at most ``WAIT_S``) until the stream has read ``at_least`` frames; the count."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "".join(lines)
        n = _frames_in(lines)
        if n is not None and n >= at_least:
            return n
        time.sleep(0.3)
    raise AssertionError(f"fewer than {at_least} frames read in {WAIT_S} s: {''.join(lines)}")


def _run_through_two_deaths(server, model: Path, out: Path):
    """The stream through two deaths of its server; each time 40 frames flow again (at the
    new size) before the next event. Returns (process, kill times, return times, stderr)."""
    args = ["stream", "--model", model, "--source", server.url, "--reconnect", "--alpha", "0"]
    args += ["--report", out / "report.json", "--record", out / "rec.mp4", "--metrics-port", "0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseg", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    _watch(proc, lines)
    kills, returns = [], []
    try:
        seen = _wait_for_frames(proc, lines, 40)
        for size, down in zip(SIZES[1:], DOWN_S):
            kills.append(time.time())
            server.kill()
            time.sleep(down)  # how long the camera is away: what the test sets up, not a bound
            server.start(size=size)
            returns.append(time.time())
            seen = _wait_for_frames(proc, lines, _frames_in(lines) + 40)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=WAIT_S)
    finally:
        proc.kill()
    assert seen >= 120
    return proc, kills, returns, lines


def test_the_stream_survives_two_server_deaths_in_order_and_resized(
    rtsp_server, tiny_onnx, tmp_path
):
    server = rtsp_server(size=SIZES[0])
    proc, kills, returns, lines = _run_through_two_deaths(server, tiny_onnx, tmp_path)
    assert proc.returncode == 0, "".join(lines)
    report = json.loads((tmp_path / "report.json").read_text())
    src = report["sources"][0]
    assert src["frames_in"] == src["frames_out"] + src["frames_dropped"] + src["frames_failed"]
    assert src["reconnects"] == 2 and len(src["outages"]) == 2, src
    seconds = sum(o["seconds"] for o in src["outages"])
    assert src["outage_s"] == pytest.approx(seconds, abs=0.01)
    assert report["outage_s"] == src["outage_s"]
    # each outage begins after its kill and ends with a frame after the server is back (it
    # cannot come sooner), before the next kill (frames flowed in between): the outages are the
    # server's deaths, in order (ms: the report's times are to the millisecond)
    ms = 1e-3
    for outage, killed, back in zip(src["outages"], kills, returns):
        start, end = _epoch(outage["start"]), _epoch(outage["end"])
        assert killed - ms <= start <= end and back - ms <= end, (outage, killed, back)
        assert end - start == pytest.approx(outage["seconds"], abs=2 * ms)
    assert _epoch(src["outages"][0]["end"]) < kills[1]
    assert report["errors"] == [] and src["state"] == "stopped"

    videos = [tmp_path / "rec.mp4", tmp_path / "rec.001.mp4", tmp_path / "rec.002.mp4"]
    everything: list[int] = []
    for video, size in zip(videos, SIZES):
        shape, stamps = _stamps(video)
        assert shape == size, video
        assert len(stamps) > 25 and None not in stamps, video
        everything += stamps
    # in order (a server behind its schedule sends a burst within one millisecond: equal
    # stamps); none written twice: as many as went out, each counted in once
    assert everything == sorted(everything)
    assert len(everything) == src["frames_out"]


def _udp_sockets(pid: int | str = "self") -> int:
    """UDP sockets open in process ``pid``."""
    inodes = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        if os.path.exists(table):
            with open(table) as f:
                inodes |= {line.split()[9] for line in list(f)[1:]}
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # the descriptor listdir itself used
            continue
        count += link.startswith("socket:[") and link[8:-1] in inodes
    return count


@pytest.mark.parametrize("reader", ["ffmpeg", "gstreamer"])
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_the_rtsp_transport_is_the_one_asked_for(rtsp_server, transport, reader):
    from edgeseg.streaming import rtsp

    if reader == "gstreamer" and (why := rtsp.gstreamer_missing()):
        pytest.skip(f"no GStreamer reader here: {why}")
    server = rtsp_server(size=(320, 180))
    before = _udp_sockets()
    with open_source(server.url, rtsp_transport=transport, reader=reader) as src:
        frames = [src.read() for _ in range(5)]
        proc = getattr(src, "proc", None)  # gst-launch-1.0 reads in a process of its own
        udp = _udp_sockets(proc.pid) if proc else _udp_sockets() - before
    assert all(f is not None and f.image.shape == (180, 320, 3) for f in frames)
    assert (udp > 0) == (transport == "udp"), udp


def test_realtime_over_rtsp_shows_the_newest_frame_not_a_queue(rtsp_server, tiny_onnx):
    """A sink four times slower than the camera: realtime drops the backlog, so what it shows
    is never more than a few frames old (a queue would fall further behind every second)."""
    server = rtsp_server(size=(320, 180), fps=25)
    ages: list[float] = []

    def slow(result) -> None:
        ages.append(stamp_age_ms(result.frame))
        time.sleep(0.16)

    pipe = StreamPipeline(
        Segmenter(tiny_onnx), [server.url], sinks=[CallbackSink(slow)], mode="realtime"
    )
    pipe.start()
    time.sleep(6)
    pipe.stop()
    report = pipe.join()
    assert report["sources"][0]["reader"].startswith(("ffmpeg", "gstreamer "))
    late = [a for a in ages[5:] if a is not None]
    assert len(late) >= 15 and report["frames_dropped"] > len(ages)
    assert max(late) < 600, late
    assert sum(late[-10:]) / 10 < 2 * sum(late[:10]) / 10 + 100


def test_reconnect_waits_for_a_camera_that_is_not_up_yet(rtsp_ready, dashcam, tiny_onnx):
    """A robot boots before its camera: with reconnect the first open is retried until the
    server answers, and frames then flow."""
    from edgeseg.testing import RtspServer

    server = RtspServer(dashcam, size=(320, 180))
    got: list[int] = []
    pipe = StreamPipeline(
        Segmenter(tiny_onnx),
        [server.url],
        sinks=[CallbackSink(lambda r: got.append(r.index))],
        reconnect=True,
        open_timeout=3,
    )
    pipe.start()
    try:
        time.sleep(3)
        assert not got
        back = time.monotonic()
        server.start()
        while not got and time.monotonic() - back < 10:
            time.sleep(0.05)
        assert got, "no frame within 10 s of the camera coming up"
        assert time.monotonic() - back < 2.5
        time.sleep(1)
    finally:
        pipe.stop()
        report = pipe.join()
        server.close()
    assert report["frames_out"] >= 10 and report["exit_code"] == 0
    src = report["sources"][0]
    assert src["outages"] and "cannot open stream" in src["outages"][0]["reason"]
