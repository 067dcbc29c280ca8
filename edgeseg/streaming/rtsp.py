"""RTSP cameras read through GStreamer (``rtspsrc ! depay ! parse ! decoder``) or OpenCV's FFmpeg.

Why GStreamer first: OpenCV's FFmpeg reader garbles H.264 that a camera sends as several slices a
frame (x264's sliced threads, many IP cameras) — against the real test server, none of 60 such
frames matched a decode of the stream as sent, while every one read through GStreamer did
(``tests/streaming/test_rtsp_reader.py``). GStreamer also decodes on the Jetson's hardware
decoder (``nvv4l2decoder``) where there is one, and ``avdec_h264``/``avdec_h265`` elsewhere.

``--reader auto`` (the default) takes GStreamer when it can run here — through OpenCV when
OpenCV has GStreamer, else through ``gst-launch-1.0`` (:mod:`.gst_launch`) — and FFmpeg
otherwise. The codec is not known before connecting: H.264 is tried first, H.265 when the
camera's stream does not link to H.264's depayloader (a quick refusal, not a timeout), and the
codec that worked is remembered for that URL's reconnects. Through OpenCV, which reports no
reason for a failure, ``decodebin`` picks depayloader, parser and decoder instead.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Callable

from edgeseg._redact import redact
from edgeseg.errors import EdgesegError
from edgeseg.streaming.frame import Source
from edgeseg.streaming.gst_launch import GstPipelineError, gst_launch_path, opencv_has_gstreamer

READERS = ("auto", "gstreamer", "ffmpeg")
CODECS = ("h264", "h265")
PACKAGES = (
    "gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav"
)
TCP_TIMEOUT_US = 5_000_000  # as FFmpeg's open and read timeouts: a dead camera is known in 5 s
_learned: dict[str, str] = {}  # URL -> the codec it was last opened with


def is_rtsp(spec: str) -> bool:
    """Whether ``spec`` is an RTSP URL (``rtsp://``, ``rtsps://``)."""
    return spec.lower().startswith(("rtsp://", "rtsps://"))


@functools.cache
def has_element(name: str) -> bool:
    """Whether this machine's GStreamer has the element ``name`` (False without gst-inspect)."""
    if shutil.which("gst-inspect-1.0") is None:
        return False
    try:
        done = subprocess.run(
            ["gst-inspect-1.0", "--exists", name], capture_output=True, timeout=30, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def decoder(codec: str) -> str:
    """The decode chain for ``codec``'s parsed stream, ending in raw video in system memory: the
    Jetson's hardware decoder (its NVMM output copied out by ``nvvidconv``) where present, else
    libav's software decoder."""
    if has_element("nvv4l2decoder") and has_element("nvvidconv"):
        return "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx"
    return f"avdec_{codec}"


def gstreamer_missing() -> str | None:
    """Why the GStreamer reader cannot run here, or None when it can."""
    if not opencv_has_gstreamer() and gst_launch_path() is None:
        return "neither OpenCV's GStreamer nor gst-launch-1.0 is installed"
    needed = ["rtspsrc", "rtph264depay", "h264parse", "videoconvert"]
    if not opencv_has_gstreamer():
        needed.append("gdppay")
    if not (has_element("nvv4l2decoder") or has_element("avdec_h264")):
        needed.append("avdec_h264")
    missing = [e for e in needed if not has_element(e)]
    return f"GStreamer lacks {', '.join(missing)}" if missing else None


def pipeline(url: str, codec: str | None, transport: str = "tcp") -> str:
    """The GStreamer description that reads ``url`` (``codec`` over ``transport``; None:
    ``decodebin`` picks depayloader, parser and decoder) into BGR frames at an ``appsink``.
    Jitter buffer: none over TCP (rtspsrc's default holds 2 s), 50 ms over UDP to put packets
    that arrive out of order back in order. ``sync=false``: frames go out once decoded."""
    location = url.replace('"', "%22")  # quoted: '!' or ',' in a URL stay the URL's
    latency = 50 if transport == "udp" else 0
    decode = f"rtp{codec}depay ! {codec}parse ! {decoder(codec)}" if codec else _decodebin()
    return (
        f'rtspsrc location="{location}" protocols={transport} latency={latency} '
        f"tcp-timeout={TCP_TIMEOUT_US} ! {decode} ! videoconvert "
        "! video/x-raw,format=BGR ! appsink sync=false max-buffers=1 drop=true"
    )


def _decodebin() -> str:
    """decodebin, whose hardware decoder on a Jetson hands out NVMM buffers: nvvidconv copies
    them out (it takes system memory too, should decodebin pick a software decoder)."""
    if has_element("nvvidconv"):
        return "decodebin ! nvvidconv ! video/x-raw,format=BGRx"
    return "decodebin"


def use_gstreamer(reader: str) -> bool:
    """Whether ``reader`` (one of :data:`READERS`) reads RTSP through GStreamer here; one error
    when ``gstreamer`` is asked for and cannot run."""
    if reader not in READERS:
        raise EdgesegError(f"reader must be one of {', '.join(READERS)}, got '{reader}'")
    if reader == "ffmpeg":
        return False
    why = gstreamer_missing()
    if why and reader == "gstreamer":
        raise EdgesegError(
            f"--reader gstreamer: {why}; install it (sudo apt-get install {PACKAGES}) or use "
            "--reader ffmpeg"
        )
    return why is None


def open_gstreamer(url: str, transport: str, open_pipeline: Callable[..., Source]) -> Source:
    """``url`` read through GStreamer, trying its last good codec first; one error naming the
    stream when neither codec gives a frame. ``open_pipeline(description, name=, spec=)`` runs
    a pipeline (:func:`edgeseg.streaming.sources.open_pipeline`). Through OpenCV, which says
    nothing of why a pipeline failed, ``decodebin`` chooses the decoder in one try."""
    if opencv_has_gstreamer():
        return _open(url, pipeline(url, None, transport), open_pipeline, "decodebin")
    first = _learned.get(url, CODECS[0])
    order = [first, *(c for c in CODECS if c != first)]
    errors: list[str] = []
    for codec in order:
        try:
            decode = decoder(codec).split(" ! ")[0]
            source = _open(url, pipeline(url, codec, transport), open_pipeline, decode)
        except _NotThisCodec as e:
            errors.append(str(e))
            continue
        _learned[url] = codec
        return source
    raise EdgesegError(
        f"cannot open stream {redact(url)} through GStreamer: {errors[0]}; try --reader ffmpeg"
    )


class _NotThisCodec(Exception):
    """The stream did not link to this codec's depayloader."""


def _open(url: str, description: str, open_pipeline: Callable[..., Source], decode: str) -> Source:
    name = redact(url)
    try:
        source = open_pipeline(description, name=name, spec=url)
    except GstPipelineError as e:
        if any("not-linked" in line for line in e.log):
            raise _NotThisCodec("its video is neither H.264 nor H.265") from None
        why = next((ln for ln in e.log if ln.startswith(("ERROR", "WARNING"))), str(e))
        why = re.sub(r"^(ERROR|WARNING): (from element \S+: )?", "", why).rstrip(".")
        fix = (
            f"install GStreamer's plugins (sudo apt-get install {PACKAGES}) or use --reader ffmpeg"
            if "no element" in why
            else "check the address, credentials and network"
        )
        raise EdgesegError(
            f"cannot open stream {name} (GStreamer: {why[:1].lower()}{why[1:]}): {fix}"
        ) from None
    except EdgesegError as e:  # through OpenCV, which gives no reason
        raise EdgesegError(
            f"cannot open stream {name} through GStreamer: check the address, credentials and "
            "network, or try --reader ffmpeg"
        ) from e
    source.via = f"gstreamer {decode}"
    return source
