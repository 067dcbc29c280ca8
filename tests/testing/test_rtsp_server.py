"""The test RTSP server is real and behaves like a camera: it serves the clip in a loop at its
frame rate, stamps every frame with its send time, and can die and return at another size."""

from __future__ import annotations

import time

import numpy as np

from edgeseg.streaming.sources import open_source
from edgeseg.testing import RtspServer, read_stamp, rtsp_server_missing, stamp_age_ms


def _frames(url: str, n: int) -> list[np.ndarray]:
    with open_source(url) as src:
        return [src.read().image for _ in range(n)]


def test_it_serves_stamped_frames_at_its_size_and_rate(rtsp_server):
    server = rtsp_server(size=(320, 180), fps=25)
    t0 = time.monotonic()
    frames = _frames(server.url, 40)
    elapsed = time.monotonic() - t0
    assert {f.shape for f in frames} == {(180, 320, 3)}
    stamps = [read_stamp(f) for f in frames]
    assert None not in stamps
    assert all(a < b for a, b in zip(stamps, stamps[1:]))
    # Paced like a camera: 25 FPS sends a frame every 40 ms (the first few may be buffered).
    steps = np.diff(stamps[10:])
    assert 30 <= np.median(steps) <= 50
    assert elapsed > 1.0
    age = stamp_age_ms(frames[-1])
    assert age is not None and 0 <= age < 5000


def test_it_returns_on_the_same_port_at_another_size(rtsp_server):
    server = rtsp_server(size=(320, 180))
    port = server.port
    assert _frames(server.url, 2)[0].shape == (180, 320, 3)
    server.kill()
    server.start(size=(240, 136))
    assert server.port == port
    assert _frames(server.url, 2)[0].shape == (136, 240, 3)


def test_a_stamp_with_a_wrong_checksum_is_unreadable():
    assert read_stamp(np.zeros((180, 320, 3), np.uint8)) is None
    assert read_stamp(np.full((180, 320, 3), 255, np.uint8)) is None
    assert read_stamp(np.zeros((8, 320, 3), np.uint8)) is None


def test_the_reason_it_cannot_run_is_named(tmp_path):
    reason = rtsp_server_missing(python=str(tmp_path / "no-python"))
    assert reason is not None and "no-python" in reason


def test_a_server_that_cannot_start_raises_with_its_error(rtsp_ready, tmp_path):
    server = RtspServer(tmp_path / "missing.mp4")
    try:
        server.start(timeout=30)
    except RuntimeError as e:
        assert "did not start" in str(e) and "cannot decode" in str(e)
    else:
        raise AssertionError("a server without its clip started")
    finally:
        server.close()
