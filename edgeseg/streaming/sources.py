"""Frame sources for the stream pipeline: cameras, files, image folders, URLs, GStreamer, synthetic.

``open_source(spec)`` picks the kind from the spec string:

=============================  ==============================================================
``0``, ``1``, ``/dev/video2``  V4L2 camera through OpenCV (live)
``clip.mp4``                   video file (finite; every frame, in order)
``frames/``, ``"img/*.png"``   image folder or glob, sorted by name (finite)
``rtsp://…``, ``http://…``     network stream (live): RTSP through GStreamer where it runs
                               (:mod:`.rtsp`), else OpenCV/FFmpeg; over TCP unless
                               ``rtsp_transport="udp"``
``… ! appsink``                GStreamer pipeline (live): through OpenCV when it has GStreamer,
                               else run by gst-launch-1.0 (:mod:`.gst_launch`); e.g. a Jetson
                               CSI camera::

                                   nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,
                                   height=720,framerate=30/1 ! nvvidconv ! video/x-raw,
                                   format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink
                                   drop=1
``synthetic[:WxH[@FPS]]``      built-in moving road scene, paced like a camera (live)
=============================  ==============================================================

A source hands out ``Frame`` objects stamped with their capture time, the clock every latency
figure is measured from.
"""

from __future__ import annotations

import glob as globlib
import os
import re
import threading
import time
from pathlib import Path

import numpy as np

from edgeseg._io import IMAGE_EXTS, is_image, list_images
from edgeseg._redact import redact
from edgeseg.errors import EdgesegError
from edgeseg.streaming import rtsp
from edgeseg.streaming.frame import Frame, FrameError, Source
from edgeseg.streaming.gst_launch import opencv_has_gstreamer

RTSP_TRANSPORTS = ("tcp", "udp")
# OpenCV reads FFmpeg's open options from one process-wide variable: opens take turns.
_FFMPEG_OPEN = threading.Lock()
# Probe 0.1 s of an RTSP stream instead of FFmpeg's 5 s: the SDP already names the codec and size
# (sprop-parameter-sets), and a reconnect must be quick. Streams that need more are retried with
# FFmpeg's default.
FAST_PROBE = "analyzeduration;100000"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")

__all__ = [
    "CaptureSource",
    "Frame",
    "FrameError",
    "ImageFolderSource",
    "Source",
    "SyntheticSource",
    "open_source",
]


def _available_cameras() -> list[str]:
    return sorted(str(p) for p in Path("/dev").glob("video*"))


class CaptureSource(Source):
    """Anything cv2.VideoCapture opens: cameras, files, URLs, GStreamer pipelines."""

    def __init__(
        self,
        target: str | int,
        kind: str,
        name: str,
        *,
        rtsp_transport: str = "tcp",
        spec: str | None = None,
    ) -> None:
        self.target, self.kind, self.name = target, kind, redact(name)
        self._spec = spec
        self.rtsp_transport = rtsp_transport
        self.live = kind in ("camera", "url", "gstreamer")
        self.via = "ffmpeg" if kind == "url" else ""
        self.cap = None
        self.index = 0
        self._open(first=True)

    def _open(self, first: bool = False) -> bool:
        import cv2

        # Our own one-line errors replace OpenCV's and FFmpeg's stderr warnings (a missing camera
        # or a corrupt file would otherwise print several lines before ours).
        # OpenCV's own messages name the URL, password and all: silent while opening.
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")  # AV_LOG_FATAL
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        if self.cap is not None:
            self.cap.release()
        if self.kind == "gstreamer":
            self.cap = cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)
        elif self.kind == "camera":
            self.cap = (
                cv2.VideoCapture(self.target, cv2.CAP_V4L2)
                if os.name == "posix"
                else cv2.VideoCapture(self.target)
            )
        elif cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG):
            self.cap = self._open_ffmpeg()
            if not self.cap.isOpened() and self.kind == "file":  # another backend may read it
                self.cap = cv2.VideoCapture(self.target)
        else:  # e.g. a Jetson's system OpenCV built without FFmpeg: GStreamer opens files too
            self.cap = cv2.VideoCapture(self.target)
        if self.kind in ("url", "camera"):
            self.cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not a backlog in the driver
        ok = self.cap.isOpened()
        fps = self.cap.get(cv2.CAP_PROP_FPS) if ok else 0.0
        self.fps = fps if 0 < fps < 1000 else 0.0
        if not ok and first:
            raise EdgesegError(redact(self._open_error()))
        return ok

    @property
    def is_rtsp(self) -> bool:
        return self.kind == "url" and str(self.target).lower().startswith(("rtsp://", "rtsps://"))

    def _open_ffmpeg(self):
        """VideoCapture through FFmpeg; RTSP with its transport and a short probe (then, if that
        fails, FFmpeg's full probe)."""
        import cv2

        tries = [None]
        if self.is_rtsp:
            transport = f"rtsp_transport;{self.rtsp_transport}"
            tries = [f"{transport}|{FAST_PROBE}", transport]
        for options in tries:
            with _FFMPEG_OPEN:
                saved = os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                if options:
                    os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = options
                try:
                    cap = cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, self._ffmpeg_params())
                finally:
                    os.environ.pop("OPENCV_FFMPEG_CAPTURE_OPTIONS", None)
                    if saved is not None:
                        os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = saved
            if cap.isOpened():
                return cap
        return cap

    def _ffmpeg_params(self) -> list[int]:
        """Open-time settings for files and URLs (FFmpeg reads them only when opening).

        Decoder threads: libavcodec's frame threading holds each frame back one frame per
        thread, latency a live stream must not pay, so URLs decode on one thread. Files do too
        on up to four cores: the pipeline's own stages already keep the cores busy, and frame
        threading only adds synchronisation (CPU time per frame in docs/pipeline.md). Above four
        cores FFmpeg chooses.
        A dead server must not block for FFmpeg's default 30 s: 5 s open and read timeouts.
        """
        import cv2

        threads = 1 if self.kind == "url" or (os.cpu_count() or 1) <= 4 else 0
        params = [cv2.CAP_PROP_N_THREADS, threads] if threads else []
        if self.kind == "url":
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 5000, cv2.CAP_PROP_READ_TIMEOUT_MSEC, 5000]
        return params

    def _open_error(self) -> str:
        if self.kind == "camera":
            cams = _available_cameras()
            return (
                f"camera {self.target} is not there; "
                + (
                    f"devices present: {', '.join(cams)}"
                    if cams
                    else "no /dev/video* devices exist on this machine"
                )
                + " (pass --camera N for one of them, or --source FILE|URL)"
            )
        if self.kind == "gstreamer":
            return (
                f"cannot open the GStreamer pipeline {self.target}: run it with gst-launch-1.0 "
                "to see GStreamer's own error"
            )
        if self.kind == "url":
            return f"cannot open stream {self.target}: check the address, credentials and network"
        return (
            f"cannot decode video {self.target}: the file is corrupt or in a format OpenCV's "
            "FFmpeg cannot read"
        )

    def read(self) -> Frame | None:
        t0 = time.perf_counter()
        ok, img = self.cap.read()
        t1 = time.perf_counter()
        if not ok or img is None:
            return None
        if img.ndim == 2:  # some cameras and GStreamer caps deliver grey
            import cv2

            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        f = Frame(img, self.index, t1, (t1 - t0) * 1e3, self.name)
        self.index += 1
        return f

    def reopen(self) -> bool:
        return self.live and self._open()

    @property
    def spec(self) -> str:
        return self._spec or str(self.target)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class ImageFolderSource(Source):
    """Sorted image files of a folder or a glob. An unreadable file is one failed frame
    (:class:`FrameError`); the folder goes on."""

    fps = 0.0

    def __init__(self, files: list[Path], name: str) -> None:
        self.files, self.name = files, name
        self.index = 0

    def read(self) -> Frame | None:
        import cv2

        if self.index >= len(self.files):
            return None
        path = self.files[self.index]
        self.index += 1
        t0 = time.perf_counter()
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        if img is None:
            raise FrameError(
                f"cannot read image {path}: the file is empty, truncated or not an image"
            )
        return Frame(img, self.index - 1, t1, (t1 - t0) * 1e3, self.name)


class SyntheticSource(Source):
    """The built-in road scene, driving forward, paced at ``fps`` like a camera (0: unpaced).

    A loop of ``loop`` frames is rendered up front and replayed, so the source costs no CPU while
    streaming; ``max_frames`` ends it (None: endless).
    """

    live = True

    def __init__(
        self,
        size_hw: tuple[int, int] = (360, 640),
        fps: float = 30.0,
        loop: int = 48,
        max_frames: int | None = None,
        seed: int = 0,
    ) -> None:
        from edgeseg.data.synthetic import render_clip

        self.frames = [
            np.ascontiguousarray(img[..., ::-1]) for img, _ in render_clip(loop, size_hw, seed)
        ]
        self.fps, self.max_frames = fps, max_frames
        self.name = f"synthetic:{size_hw[1]}x{size_hw[0]}@{fps:g}"
        self.index = 0
        self._t0: float | None = None

    def read(self) -> Frame | None:
        if self.max_frames is not None and self.index >= self.max_frames:
            return None
        if self.fps > 0:
            if self._t0 is None:
                self._t0 = time.perf_counter()
            due = self._t0 + self.index / self.fps
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        img = self.frames[self.index % len(self.frames)].copy()  # a camera hands out fresh buffers
        f = Frame(img, self.index, time.perf_counter(), 0.0, self.name)
        self.index += 1
        return f


def _parse_synthetic(spec: str) -> tuple[tuple[int, int], float]:
    size, fps = (360, 640), 30.0
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    try:
        if "@" in rest:
            rest, f = rest.split("@", 1)
            fps = float(f)
        if rest:
            w, h = rest.lower().split("x")
            size = (int(h), int(w))
    except ValueError:
        raise EdgesegError(
            f"bad synthetic source '{spec}'; use synthetic, synthetic:640x360 or "
            "synthetic:640x360@30"
        ) from None
    if min(size) < 8 or fps < 0:
        raise EdgesegError(
            f"bad synthetic source '{spec}': frames need at least 8x8 pixels and fps >= 0"
        )
    return size, fps


def open_pipeline(description: str, name: str = "gstreamer", spec: str | None = None) -> Source:
    """A GStreamer pipeline, run by OpenCV when it has GStreamer, else by gst-launch-1.0."""
    if opencv_has_gstreamer():
        return CaptureSource(description, "gstreamer", name, spec=spec)
    from edgeseg.streaming.gst_launch import GstLaunchSource

    return GstLaunchSource(description, name=name, spec=spec)


def open_source(
    spec: str | int,
    max_frames: int | None = None,
    *,
    rtsp_transport: str = "tcp",
    reader: str = "auto",
) -> Source:
    """Open a source from its spec (see the module docstring); one clear error when it cannot.

    ``rtsp_transport``: ``tcp`` (default: no packet loss, one connection through firewalls) or
    ``udp`` (less delay on a clean network, smeared frames when packets are lost).
    ``reader``: how RTSP is read: ``gstreamer``, ``ffmpeg``, or ``auto`` (GStreamer where it
    runs; :mod:`.rtsp` says why).

    What exists on disk is a file or a folder first, whatever its name (a folder called ``0``,
    a file name with ``!`` in it); then camera indices, ``synthetic``, GStreamer pipelines, URLs
    and globs. Names and messages never carry credentials (:func:`edgeseg._redact.redact`).
    """
    text = str(spec)
    path = Path(text)
    if not isinstance(spec, int) and path.exists():
        if path.is_dir():
            files = list_images(path)
            if not files:
                raise EdgesegError(f"folder {path} holds no images ({', '.join(IMAGE_EXTS)})")
            return ImageFolderSource(files, str(path))
        return CaptureSource(str(path), "file", path.name)
    if isinstance(spec, int) or text.isdigit():
        return CaptureSource(int(text), "camera", f"camera {text}")
    if text.startswith("/dev/video"):
        return CaptureSource(text, "camera", text)
    if text == "synthetic" or text.startswith("synthetic:"):
        size, fps = _parse_synthetic(text)
        return SyntheticSource(size, fps, max_frames=max_frames)
    if _URL.match(text) and " ! " not in text:  # before pipelines: a URL may hold a '!'
        if rtsp_transport not in RTSP_TRANSPORTS:
            raise EdgesegError(
                f"rtsp_transport must be one of {', '.join(RTSP_TRANSPORTS)}, got "
                f"'{rtsp_transport}'"
            )
        if rtsp.is_rtsp(text) and rtsp.use_gstreamer(reader):
            return rtsp.open_gstreamer(text, rtsp_transport, open_pipeline)
        return CaptureSource(text, "url", text, rtsp_transport=rtsp_transport)
    if "!" in text:
        return open_pipeline(text)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in globlib.glob(text) if is_image(p))
        if not files:
            raise EdgesegError(f"no images match '{text}'")
        return ImageFolderSource(files, text)
    raise EdgesegError(
        f"source not found: {redact(text)}; pass a video file, an image folder or glob, a camera "
        "index, an rtsp:// or http:// URL, a GStreamer pipeline, or 'synthetic'"
    )
