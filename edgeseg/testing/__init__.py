"""Tools to test an edgeseg deployment against real parts: a real RTSP server that can be killed,
restarted and resized, and the send-time stamps it paints into its frames.

The server (:mod:`edgeseg.testing.rtsp_server`) is GStreamer's gst-rtsp-server, run by the
operating system's Python from the OS packages::

    sudo apt-get install python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good \\
        gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav

>>> with RtspServer("clip.mp4", size=(640, 360)) as server:  # doctest: +SKIP
...     server.url  # rtsp://127.0.0.1:PORT/cam
...     server.kill(); server.start(size=(480, 270))  # a camera that dies and returns smaller
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER_SCRIPT = Path(__file__).with_name("rtsp_server.py")
STAMP_BITS, STAMP_ROWS, STAMP_SALT = 40, 16, 0xA5  # as rtsp_server.py paints them
_PROBE = (
    "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
    "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
    "missing = [e for e in ('x264enc', 'rtph264pay', 'appsrc', 'decodebin') "
    "if Gst.ElementFactory.find(e) is None]; print(' '.join(missing))"
)


def rtsp_server_missing(python: str = SYSTEM_PYTHON) -> str | None:
    """Why :class:`RtspServer` cannot run on this machine, or None when it can."""
    if not Path(python).exists():
        return f"{python} is not there (the server runs on the OS's Python with PyGObject)"
    try:
        out = subprocess.run(
            [python, "-c", _PROBE], capture_output=True, text=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return "probing GStreamer timed out"
    if out.returncode:
        return "gst-rtsp-server is not installed: " + (out.stderr.strip().splitlines() or [""])[-1]
    if out.stdout.strip():
        return f"GStreamer elements missing: {out.stdout.strip()}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """A real RTSP server serving ``video`` at ``rtsp://127.0.0.1:port/cam``, run as a child
    process that tests kill and restart (same port, perhaps another frame size).

    Args:
        video: the clip, replayed in a loop.
        size: (width, height) to serve at; None: the clip's.
        fps: frames a second, paced like a camera.
        slices: encode each frame as several slices (as some IP cameras do).
        codec: ``h264`` or ``h265``.
        record: a file the server also writes the encoded stream to, exactly as it sends it (a
            byte stream, overwritten at each start and each time the first client connects), so
            a test can compare a client's frames with a decode of what was sent.
        port: the port (default: a free one).
    """

    def __init__(
        self,
        video: str | Path,
        *,
        size: tuple[int, int] | None = None,
        fps: float = 25.0,
        slices: bool = False,
        codec: str = "h264",
        record: str | Path | None = None,
        port: int | None = None,
        python: str = SYSTEM_PYTHON,
    ) -> None:
        self.video, self.size, self.fps, self.slices = str(video), size, fps, slices
        self.codec, self.record = codec, record
        self.port, self.python = port or free_port(), python
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self, size: tuple[int, int] | None = None, timeout: float = 30.0) -> float:
        """Start serving (at ``size`` when given); returns the time.monotonic() when clients
        could connect."""
        self.close()
        if size is not None:
            self.size = size
        args = [self.python, str(SERVER_SCRIPT), "--video", self.video, "--port", str(self.port)]
        args += ["--fps", str(self.fps)] + (["--slices"] if self.slices else [])
        args += ["--codec", self.codec] + (["--record", str(self.record)] if self.record else [])
        if self.size:
            args += ["--size", f"{self.size[0]}x{self.size[1]}"]
        # stderr to a file: a pipe nobody reads would block a chatty server during a long soak
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._log, start_new_session=True
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not (ready and self.proc.stdout.readline().startswith(b"ready")):
            self.kill()
            self._log.seek(0)
            err = self._log.read().decode(errors="replace").strip()
            raise RuntimeError(f"the RTSP server did not start: {err[-500:]}")
        return time.monotonic()

    def kill(self) -> bool:
        """SIGKILL the server, as a power cut would; True if it was running."""
        if self.proc is None:
            return False
        running = self.proc.poll() is None
        if running:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc.stdout.close()
        self.proc = None
        return running

    def close(self) -> None:
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_stamp(image: np.ndarray) -> int | None:
    """The send time (time.monotonic() in ms, modulo 2**32) that :class:`RtspServer` painted
    into a BGR frame; None when the stamp is unreadable (its checksum fails)."""
    h, w = image.shape[:2]
    block = w // (STAMP_BITS + 4)
    if block < 2 or h < STAMP_ROWS:
        return None
    band = image[STAMP_ROWS // 4 : 3 * STAMP_ROWS // 4].mean(axis=(0, 2))
    centres = [(i + 2) * block + block // 2 for i in range(STAMP_BITS)]
    half = max(1, block // 4)
    bits = [band[c - half : c + half].mean() > 125 for c in centres]
    value = int("".join("1" if b else "0" for b in bits), 2)
    ms, check = value >> 8, value & 0xFF
    return ms if (sum(ms.to_bytes(4, "big")) + STAMP_SALT) & 0xFF == check else None


def stamp_age_ms(image: np.ndarray, now: float | None = None) -> float | None:
    """Milliseconds since the server sent this frame (its stamp), on this machine's clock."""
    ms = read_stamp(image)
    if ms is None:
        return None
    now_ms = int((time.monotonic() if now is None else now) * 1000) & 0xFFFFFFFF
    return float((now_ms - ms) % (1 << 32))
