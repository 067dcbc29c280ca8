"""GStreamer pipelines with pip's OpenCV (built without GStreamer): run by gst-launch-1.0 as a
child process, frames read from its pipe. Real GStreamer throughout; skipped where the OS's
GStreamer is not installed."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import threading

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.streaming.gst_launch import (
    GdpReader,
    GstLaunchSource,
    gst_launch_path,
    launch_args,
    opencv_has_gstreamer,
)
from edgeseg.streaming.sources import open_source
from edgeseg.testing import read_stamp


def _has_element(name: str) -> bool:
    return subprocess.run(["gst-inspect-1.0", name], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    gst_launch_path() is None or not _has_element("gdppay"),
    reason="needs gst-launch-1.0 and gdppay (gstreamer1.0-tools, gstreamer1.0-plugins-bad)",
)


WAIT_S = 60  # the most a test waits for what takes a second: a hang fails instead of blocking


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(opencv_has_gstreamer(), reason="this OpenCV runs GStreamer itself")
def test_a_pipeline_ending_in_appsink_runs_without_a_gstreamer_opencv():
    with open_source("videotestsrc pattern=red ! video/x-raw,width=160,height=120 ! appsink") as s:
        assert isinstance(s, GstLaunchSource) and s.live
        frames = [s.read() for _ in range(3)]
    assert [f.index for f in frames] == [0, 1, 2]
    image = frames[0].image
    assert image.shape == (120, 160, 3) and image.dtype == np.uint8
    assert image[..., 2].min() > 200 and image[..., :2].max() < 60  # red, in BGR order
    assert s.fps == 30.0


def test_rows_padded_by_gstreamer_come_out_packed():
    pipeline = "videotestsrc pattern=blue ! video/x-raw,width=161,height=9 ! appsink"
    with GstLaunchSource(pipeline) as s:
        image = s.read().image
    assert image.shape == (9, 161, 3) and image.flags.c_contiguous
    assert image[..., 0].min() > 200 and image[..., 1:].max() < 60


def test_a_finite_pipeline_ends_and_leaves_no_process_or_descriptor():
    before = _open_fds()
    s = GstLaunchSource("videotestsrc num-buffers=5 ! video/x-raw,width=64,height=48 ! appsink")
    assert len(list(s)) == 5
    s.close()
    assert s.proc.returncode is not None
    assert _open_fds() == before


def test_a_stalled_pipeline_returns_none_within_its_read_timeout():
    # a frame every 4 s: a read that waited the default 5 s (or for ever) would get the next one
    slow = (
        "videotestsrc is-live=true ! video/x-raw,width=64,height=48,framerate=1/4 "
        "! appsink sync=false"
    )
    with GstLaunchSource(slow, read_timeout=0.5) as s:
        default = inspect.signature(GstLaunchSource).parameters["read_timeout"].default
        assert s.read_timeout < 4 < default
        assert s.read() is not None  # the first frame comes at once
        assert s.read() is None  # gave up after 0.5 s, long before the second frame


def test_close_stops_a_live_pipeline_at_once():
    s = GstLaunchSource("videotestsrc is-live=true ! video/x-raw,width=64,height=48 ! appsink")
    s.read()
    closing = threading.Thread(target=s.close, daemon=True)
    closing.start()
    closing.join(WAIT_S)  # a close that waited for the endless pipeline to end would hang
    assert not closing.is_alive()
    # ended by close()'s SIGTERM, not by the SIGKILL it sends a process that outlives it
    assert s.proc.returncode == -signal.SIGTERM


@pytest.mark.parametrize(
    "pipeline, words",
    [
        ("videotestsrc ! nosuchelement ! appsink", ['no element "nosuchelement"']),
        (
            "rtspsrc location=rtsp://admin:hunter2@127.0.0.1:9/x ! decodebin ! appsink",
            ["Could not open resource", "rtsp://***@127.0.0.1:9/x"],
        ),
    ],
)
def test_a_pipeline_that_fails_says_why_in_gstreamers_words(pipeline, words):
    with pytest.raises(EdgesegError) as e:
        GstLaunchSource(pipeline)
    msg = str(e.value)
    assert all(w in msg for w in words), msg
    assert "hunter2" not in msg


def test_a_missing_gst_launch_names_the_packages(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(EdgesegError, match="apt-get install gstreamer1.0-tools"):
        GstLaunchSource("videotestsrc ! appsink")


def test_the_appsinks_sync_setting_is_kept():
    args = launch_args("videotestsrc ! videoconvert ! appsink sync=false drop=true", 7)
    assert args[-3:] == ["fdsink", "fd=7", "sync=false"] and "appsink" not in args
    assert launch_args("videotestsrc ! appsink", 5)[-1] == "sync=true"
    assert "location=a b" in launch_args('filesrc location="a b" ! decodebin ! appsink', 5)


def test_caps_that_change_mid_stream_resize_the_frames(tmp_path):
    """Two real GDP streams back to back: the second's caps packet switches the size."""
    stream = tmp_path / "two.gdp"
    data = b""
    for w, h in [(64, 48), (98, 30)]:
        pipe = f"videotestsrc num-buffers=2 ! video/x-raw,width={w},height={h},format=BGR"
        data += subprocess.run(
            ["gst-launch-1.0", "-q", *pipe.split(), "!", "gdppay", "!", "fdsink", "fd=1"],
            capture_output=True,
            check=True,
        ).stdout
    stream.write_bytes(data)
    fd = os.open(stream, os.O_RDONLY)
    try:
        reader = GdpReader(fd)
        shapes = []
        while (image := reader.next(1.0)) is not None:
            shapes.append(image.shape)
    finally:
        os.close(fd)
    assert shapes == [(48, 64, 3)] * 2 + [(30, 98, 3)] * 2


def test_rtspsrc_reads_the_real_server_and_comes_back_after_it_dies(rtsp_server):
    server = rtsp_server(size=(320, 180))
    pipeline = (
        f"rtspsrc location={server.url} latency=0 protocols=tcp ! rtph264depay ! avdec_h264 "
        "! videoconvert ! appsink sync=false"
    )
    with open_source(pipeline) as s:
        frames = [s.read().image for _ in range(10)]
    assert {f.shape for f in frames} == {(180, 320, 3)}
    stamps = [read_stamp(f) for f in frames]
    assert None not in stamps and stamps == sorted(stamps)
    server.kill()
    with pytest.raises(EdgesegError, match="Could not open resource"):
        open_source(pipeline)
    server.start(size=(240, 136))
    with open_source(pipeline) as s:
        assert s.read().image.shape == (136, 240, 3)
