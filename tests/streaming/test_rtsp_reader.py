"""RTSP read through GStreamer or FFmpeg (``--reader``), against the real test server.

The server also records the stream exactly as it sends it; every frame a reader hands out is
compared with that reader's own decode of the recording (the same decoder and colour conversion),
found by the send time painted into the frame. A reader that decodes what was sent matches
bit for bit; one that garbles a frame does not."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.streaming import rtsp
from edgeseg.streaming.gst_launch import GstLaunchSource, opencv_has_gstreamer
from edgeseg.streaming.sources import open_source
from edgeseg.testing import read_stamp

FRAMES = 40


def _read(url: str, reader: str, n: int = FRAMES) -> list[np.ndarray]:
    with open_source(url, reader=reader) as src:
        frames = [src.read() for _ in range(n)]
    assert all(f is not None for f in frames)
    return [f.image for f in frames]


def _decode(recording, reader: str, codec: str) -> dict[int | None, np.ndarray]:
    """Each frame of the recorded stream by its stamp, decoded the way ``reader`` decodes."""
    frames: dict[int | None, np.ndarray] = {}
    if reader == "ffmpeg":
        cap = cv2.VideoCapture(str(recording), cv2.CAP_FFMPEG)
        while (got := cap.read())[0]:
            frames[read_stamp(got[1])] = got[1]
        cap.release()
        return frames
    decode = rtsp.decoder(codec)  # the reader's own decoder (a Jetson's hardware one there)
    desc = f'filesrc location="{recording}" ! {codec}parse ! {decode} ! videoconvert ! appsink'
    with GstLaunchSource(desc) as src:
        while (f := src.read()) is not None:
            frames[read_stamp(f.image)] = f.image
    return frames


def _exact(frames: list[np.ndarray], decoded: dict) -> int:
    """How many of ``frames`` equal the recording's decode of the frame with their stamp."""
    return sum(
        (s := read_stamp(f)) is not None and s in decoded and np.array_equal(decoded[s], f)
        for f in frames
    )


def _served(rtsp_server, tmp_path, reader: str, **kwargs) -> tuple[list, dict]:
    """A fresh server recording what it sends; ``reader``'s frames and its decode of it."""
    recording = tmp_path / f"{reader}.{kwargs.get('codec', 'h264')}"
    server = rtsp_server(size=(320, 192), record=recording, **kwargs)
    frames = _read(server.url, reader)
    server.close()  # the recording is complete once the server is gone
    return frames, _decode(recording, reader, kwargs.get("codec", "h264"))


@pytest.fixture
def gstreamer_reader():
    why = rtsp.gstreamer_missing()
    if why:
        pytest.skip(f"no GStreamer reader here: {why}")


@pytest.fixture(autouse=True)
def no_codec_remembered(monkeypatch):
    """Each test starts with no codec learned (a port may be reused)."""
    monkeypatch.setattr(rtsp, "_learned", {})


@pytest.fixture
def h265(gstreamer_reader):
    missing = [e for e in ("x265enc", "rtph265pay", "rtph265depay", "h265parse", "avdec_h265")
               if not rtsp.has_element(e)]  # fmt: skip
    if missing:
        pytest.skip(f"no H.265 in this GStreamer: {', '.join(missing)}")
    if opencv_has_gstreamer():
        pytest.skip("through OpenCV's GStreamer, decodebin picks the codec: nothing to retry")


def test_gstreamer_reads_multi_slice_h264_exactly_where_ffmpeg_garbles_it(
    rtsp_server, gstreamer_reader, tmp_path
):
    frames, decoded = _served(rtsp_server, tmp_path, "gstreamer", slices=True)
    assert _exact(frames, decoded) == FRAMES
    frames, decoded = _served(rtsp_server, tmp_path, "ffmpeg", slices=True)
    # OpenCV's FFmpeg RTSP reader smears such frames (docs/pipeline.md); if this starts to fail,
    # it reads them now, and `--reader auto` may prefer it again
    assert _exact(frames, decoded) < FRAMES // 2


@pytest.mark.parametrize("reader", ["gstreamer", "ffmpeg"])
def test_both_readers_decode_single_slice_h264_exactly(
    rtsp_server, gstreamer_reader, tmp_path, reader
):
    frames, decoded = _served(rtsp_server, tmp_path, reader)
    assert _exact(frames, decoded) == FRAMES


def test_an_h265_camera_is_read_after_h264_is_refused_and_remembered(
    rtsp_server, h265, tmp_path, monkeypatch
):
    frames, decoded = _served(rtsp_server, tmp_path, "gstreamer", codec="h265")
    assert _exact(frames, decoded) == FRAMES
    server = rtsp_server(size=(320, 180), codec="h265")
    build, tried = rtsp.pipeline, []
    monkeypatch.setattr(rtsp, "pipeline", lambda *a: tried.append(a[1]) or build(*a))
    for _ in range(2):  # a reconnect tries the codec that worked first
        with open_source(server.url) as src:
            assert src.read().image.shape == (180, 320, 3)
    assert tried == ["h264", "h265", "h265"]


def test_auto_reads_rtsp_through_gstreamer_and_names_the_stream(rtsp_server, gstreamer_reader):
    server = rtsp_server(size=(320, 180))
    with open_source(server.url) as src:
        assert src.via in ("gstreamer avdec_h264", "gstreamer nvv4l2decoder", "gstreamer decodebin")
        assert src.spec == server.url
        assert src.name == server.url and src.read().image.shape == (180, 320, 3)


def test_a_dead_camera_is_one_line_naming_it(gstreamer_reader):
    from edgeseg.testing import free_port

    url = f"rtsp://user:secret@127.0.0.1:{free_port()}/cam"
    with pytest.raises(EdgesegError) as e:
        open_source(url, reader="gstreamer")
    msg = str(e.value)
    assert msg.startswith("cannot open stream rtsp://***@127.0.0.1") and "\n" not in msg
    assert "secret" not in msg and "check the address" in msg


def test_the_pipeline_takes_the_jetson_decoder_where_there_is_one(monkeypatch):
    present = {"nvv4l2decoder", "nvvidconv"}
    monkeypatch.setattr(rtsp, "has_element", lambda name: name in present)
    desc = rtsp.pipeline("rtsp://cam/a?x=1!", "h264", "udp")
    assert "rtph264depay ! h264parse ! nvv4l2decoder ! nvvidconv" in desc
    assert 'location="rtsp://cam/a?x=1!"' in desc and "protocols=udp" in desc
    present.clear()
    assert "h265parse ! avdec_h265 ! videoconvert" in rtsp.pipeline("rtsp://cam", "h265")


def test_reader_choice_without_gstreamer(monkeypatch):
    monkeypatch.setattr(rtsp, "gstreamer_missing", lambda: "GStreamer lacks rtspsrc")
    assert rtsp.use_gstreamer("auto") is False and rtsp.use_gstreamer("ffmpeg") is False
    with pytest.raises(EdgesegError, match="--reader gstreamer: GStreamer lacks rtspsrc; install"):
        rtsp.use_gstreamer("gstreamer")
    with pytest.raises(EdgesegError, match="reader must be one of auto, gstreamer, ffmpeg"):
        open_source("rtsp://127.0.0.1:9/cam", reader="vlc")


def test_a_camera_of_another_codec_is_one_line_after_both_tries(monkeypatch):
    from edgeseg.streaming.gst_launch import GstPipelineError

    monkeypatch.setattr(rtsp, "opencv_has_gstreamer", lambda: False)

    tried = []

    def refuses(description, name, spec):
        tried.append(description.split(" ! ")[1])
        log = ["ERROR: from element /GstPipeline:pipeline0/GstRTSPSrc:rtspsrc0: Internal data "
               "stream error.", "streaming stopped, reason not-linked (-1)"]  # fmt: skip
        raise GstPipelineError("cannot run the GStreamer pipeline", log)

    with pytest.raises(EdgesegError) as e:
        rtsp.open_gstreamer("rtsp://u:p@cam/mjpeg", "tcp", refuses)
    assert tried == ["rtph264depay", "rtph265depay"]
    assert str(e.value) == (
        "cannot open stream rtsp://***@cam/mjpeg through GStreamer: its video is neither H.264 "
        "nor H.265; try --reader ffmpeg"
    )


def test_a_missing_plugin_is_named_with_the_package_to_install(monkeypatch):
    from edgeseg.streaming.gst_launch import GstPipelineError

    monkeypatch.setattr(rtsp, "opencv_has_gstreamer", lambda: False)

    def lacks(description, name, spec):
        log = ['WARNING: erroneous pipeline: no element "rtph265depay"']
        raise GstPipelineError("cannot run the GStreamer pipeline", log)

    with pytest.raises(EdgesegError, match=r"no element .rtph265depay.\): install GStreamer's"):
        rtsp.open_gstreamer("rtsp://cam/x", "tcp", lacks)


def test_through_opencvs_gstreamer_decodebin_picks_the_codec_in_one_try(monkeypatch):
    monkeypatch.setattr(rtsp, "opencv_has_gstreamer", lambda: True)
    monkeypatch.setattr(rtsp, "has_element", lambda name: False)
    tried = []

    def refuses(description, name, spec):
        tried.append(description)
        raise EdgesegError("cannot open the GStreamer pipeline")

    with pytest.raises(EdgesegError, match="^cannot open stream rtsp://cam/x through GStreamer: "):
        rtsp.open_gstreamer("rtsp://cam/x", "udp", refuses)
    assert len(tried) == 1 and " ! decodebin ! videoconvert ! " in tried[0]
    assert "latency=50" in tried[0]  # UDP: room to reorder packets
