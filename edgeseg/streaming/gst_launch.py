"""GStreamer pipelines without a GStreamer-enabled OpenCV: ``gst-launch-1.0`` as a child process.

pip's OpenCV is built without GStreamer, so ``--source "... ! appsink"`` needs another way in.
This source runs the pipeline in ``gst-launch-1.0`` (the OS's ``gstreamer1.0-tools``) with its
final ``appsink`` replaced by ``videoconvert ! video/x-raw,format=BGR ! gdppay ! fdsink``, and
reads the frames from a pipe. Chosen over PyGObject's appsink because:

- it needs no build: PyGObject from pip compiles against gobject-introspection headers, while
  gst-launch comes with the OS packages a GStreamer user has anyway (a Jetson has them);
- a pipeline that hangs or crashes (a camera driver, a dead RTSP server) takes down only its
  process: a read waits at most ``read_timeout``, and closing kills the process, so no thread is
  ever stuck inside GStreamer;
- ``gdppay`` frames each buffer with a header and sends every caps change in-band, so a frame
  size that changes mid-stream (an RTSP camera reconfigured) is read correctly.

The cost is one copy of each frame through the pipe (a 960x540 frame is 1.5 MB: well under a
millisecond). ``sync`` follows the appsink's own ``sync=`` (default true, as appsink's).
"""

from __future__ import annotations

import functools
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import threading
import time
from collections import deque

import numpy as np

from edgeseg._redact import redact
from edgeseg.errors import EdgesegError
from edgeseg.streaming.frame import Frame, Source

GDP_HEADER = struct.Struct(">BBBBHIQ")  # version, flags, padding, payload type, length, pts
GDP_HEADER_SIZE = 62
GDP_BUFFER, GDP_CAPS = 1, 2
PACKAGES = (
    "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good "
    "gstreamer1.0-plugins-bad"
)
_APPSINK = re.compile(r"!\s*appsink(?P<props>(?:\s+[\w-]+=\S+)*)\s*$")


@functools.cache
def opencv_has_gstreamer() -> bool:
    """Whether the installed OpenCV can run GStreamer pipelines (pip's never can)."""
    import cv2

    return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


def gst_launch_path() -> str | None:
    """``gst-launch-1.0`` on PATH, or None."""
    return shutil.which("gst-launch-1.0")


def launch_args(pipeline: str, fd: int) -> list[str]:
    """gst-launch's arguments: ``pipeline`` with its trailing appsink (if any) replaced by a
    BGR converter, the GDP payloader and a sink writing to ``fd``."""
    sync = "true"
    m = _APPSINK.search(pipeline)
    if m:
        props = dict(p.split("=", 1) for p in m.group("props").split())
        sync = props.get("sync", "true")
        pipeline = pipeline[: m.start()]
    tail = f"! videoconvert ! video/x-raw,format=BGR ! gdppay ! fdsink fd={fd} sync={sync}"
    # gst-launch quotes each argument as one token: the description goes in split, as a shell
    # would pass it.
    return ["gst-launch-1.0", "-q", *shlex.split(f"{pipeline.strip()} {tail}")]


def parse_caps(caps: str) -> tuple[int, int, float]:
    """Width, height and frame rate (0 when variable) of a raw BGR caps string."""
    fields = dict(re.findall(r"([\w-]+)=\([\w]+\)([^,;]+)", caps))
    if not caps.startswith("video/x-raw") or fields.get("format") != "BGR":
        raise EdgesegError(f"GStreamer delivered '{caps[:80]}', not raw BGR video")
    num, _, den = fields.get("framerate", "0/1").partition("/")
    fps = int(num) / int(den) if den and int(den) else 0.0
    return int(fields["width"]), int(fields["height"]), fps


class GdpReader:
    """Frames from a GDP stream (``gdppay`` output) on a file descriptor: caps packets set the
    frame size, buffer packets are frames, anything else (events) is skipped. Every wait is
    bounded by a timeout."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size, self.fps = (0, 0), 0.0

    def _read_exact(self, n: int, timeout: float, into: memoryview | None = None):
        """``n`` bytes, or None at the end of the stream or when nothing came for ``timeout``."""
        buf = into if into is not None else memoryview(bytearray(n))
        got = 0
        while got < n:
            ready, _, _ = select.select([self.fd], [], [], timeout)
            if not ready:
                return None
            k = os.readv(self.fd, [buf[got:]])
            if k == 0:
                return None
            got += k
        return buf

    def _header(self, timeout: float) -> tuple[int, int] | None:
        head = self._read_exact(GDP_HEADER_SIZE, timeout)
        if head is None:
            return None
        major, _, _, _, kind, length, _ = GDP_HEADER.unpack_from(head)
        if major != 1:
            raise EdgesegError("the GStreamer pipe carries something other than GDP 1.0 data")
        return kind, length

    def next(self, timeout: float, want_frame: bool = True) -> np.ndarray | bool | None:
        """The next frame (BGR, packed rows); with ``want_frame=False``, True as soon as the
        first caps are known. None at the end of the stream or after ``timeout`` without data."""
        while True:
            header = self._header(timeout)
            if header is None:
                return None
            kind, length = header
            if kind == GDP_BUFFER and want_frame:
                return self._frame(length, timeout)
            payload = self._read_exact(length, timeout) if length else memoryview(b"")
            if payload is None:
                return None
            if kind == GDP_CAPS:
                w, h, self.fps = parse_caps(bytes(payload).rstrip(b"\0").decode())
                self.size = (w, h)
                if not want_frame:
                    return True

    def _frame(self, length: int, timeout: float) -> np.ndarray | None:
        w, h = self.size
        stride = (w * 3 + 3) // 4 * 4  # GStreamer pads each BGR row to 4 bytes
        if length != stride * h:
            raise EdgesegError(f"GStreamer sent a {length}-byte frame for {w}x{h} BGR caps")
        data = np.empty(length, np.uint8)
        if self._read_exact(length, timeout, memoryview(data)) is None:
            return None
        image = data.reshape(h, stride)[:, : w * 3].reshape(h, w, 3)
        return np.ascontiguousarray(image) if stride != w * 3 else image


class GstPipelineError(EdgesegError):
    """A pipeline that gave no frame; ``log`` holds what gst-launch printed (redacted)."""

    def __init__(self, message: str, log: list[str]) -> None:
        super().__init__(message)
        self.log = log


class GstLaunchSource(Source):
    """A GStreamer pipeline run by ``gst-launch-1.0``; see the module docstring.

    Args:
        pipeline: a gst-launch description, normally ending in ``appsink``.
        open_timeout: seconds to wait for the pipeline's first caps before giving up.
        read_timeout: seconds a read waits for a frame before the feed counts as dropped.
        name: the source's name in frames and reports (default ``gstreamer``).
        spec: what opens this source again (default: the pipeline).

    Raises:
        GstPipelineError: the pipeline sent no frame within ``open_timeout``.
    """

    live = True

    def __init__(
        self,
        pipeline: str,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        *,
        name: str = "gstreamer",
        spec: str | None = None,
    ) -> None:
        if gst_launch_path() is None:
            raise EdgesegError(
                "this OpenCV has no GStreamer and gst-launch-1.0 is not installed: install "
                f"the OS's GStreamer (sudo apt-get install {PACKAGES}) to run '{redact(pipeline)}'"
            )
        self.pipeline, self.name, self._spec = pipeline, redact(name), spec or pipeline
        self.read_timeout, self.index = read_timeout, 0
        self.errors: deque[str] = deque(maxlen=20)
        r, w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                launch_args(pipeline, w),
                pass_fds=(w,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,  # Ctrl-C reaches us, not the pipeline: we stop it
            )
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.reader = GdpReader(r)
        self._stderr = threading.Thread(target=self._collect, name="gst-stderr", daemon=True)
        self._stderr.start()
        try:
            if self.reader.next(open_timeout, want_frame=False) is None:
                raise GstPipelineError(self._failure(open_timeout), list(self.errors))
        except BaseException:
            self.close()
            raise

    @property
    def spec(self) -> str:
        return self._spec

    @property
    def fps(self) -> float:
        return self.reader.fps

    def _collect(self) -> None:
        for line in self.proc.stderr:
            text = line.decode(errors="replace").strip()
            if text:
                self.errors.append(redact(text))

    def _failure(self, timeout: float) -> str:
        """Why the pipeline gave no frames: gst-launch's own error, or the timeout."""
        try:
            self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return f"GStreamer pipeline sent no frame in {timeout:g} s: {redact(self.pipeline)}"
        self._stderr.join(timeout=1.0)
        errors = [e for e in self.errors if e.startswith(("ERROR", "WARNING"))] or list(self.errors)
        why = errors[0] if errors else f"gst-launch-1.0 exited with code {self.proc.returncode}"
        if 'no element "gdppay"' in why:
            why += f" (gdppay is in gstreamer1.0-plugins-bad: sudo apt-get install {PACKAGES})"
        return f"cannot run the GStreamer pipeline {redact(self.pipeline)}: {why}"

    def read(self) -> Frame | None:
        t0 = time.perf_counter()
        image = self.reader.next(self.read_timeout)
        if image is None:
            return None
        t1 = time.perf_counter()
        frame = Frame(image, self.index, t1, (t1 - t0) * 1e3, self.name)
        self.index += 1
        return frame

    def close(self) -> None:
        """Stop the pipeline (SIGTERM, then SIGKILL after a second) and release the pipe."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.reader.fd >= 0:
            os.close(self.reader.fd)
            self.reader.fd = -1
        self._stderr.join(timeout=1.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
