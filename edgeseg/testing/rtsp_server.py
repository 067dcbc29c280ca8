"""A real RTSP server for tests and benchmarks: GStreamer's gst-rtsp-server serving a video clip.

Run by the operating system's Python, which has PyGObject and gst-rtsp-server from the OS
packages (``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{good,bad,ugly}``); it
imports nothing of edgeseg and no NumPy::

    /usr/bin/python3 rtsp_server.py --port 8554 --video clip.mp4 --size 640x360 --fps 25

The clip is decoded once into memory and replayed in an endless loop, paced like a camera, into
an H.264 encoder tuned for latency (no B-frames, a key frame every ``--key-interval`` frames, so a
client that connects sees a picture within half a second). Each frame carries its send time as a
barcode in its top rows (:func:`edgeseg.testing.read_stamp` reads it), so a client measures
glass-to-label latency across encoding, the network and decoding on one machine's clock.
Prints ``ready rtsp://127.0.0.1:PORT/PATH`` on stdout once clients can connect.
"""

import argparse
import sys
import threading
import time

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
gi.require_version("GstVideo", "1.0")
from gi.repository import GLib, Gst, GstRtspServer, GstVideo  # noqa: E402

STAMP_BITS = 40  # 32 bits of milliseconds, 8 bits of checksum
STAMP_ROWS = 16
STAMP_SALT = 0xA5


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", required=True, help="the clip to serve")
    p.add_argument("--port", type=int, default=8554)
    p.add_argument("--path", default="/cam")
    p.add_argument("--size", default=None, help="WxH to scale to (default: the clip's)")
    p.add_argument("--fps", type=float, default=25.0)
    p.add_argument("--key-interval", type=int, default=12)
    p.add_argument("--mtu", type=int, default=1400)
    p.add_argument("--slices", action="store_true", help="several slices a frame")
    p.add_argument("--codec", choices=("h264", "h265"), default="h264")
    p.add_argument(
        "--record", default=None, help="also write the encoded stream as sent to this file"
    )
    return p.parse_args()


def load_frames(path: str, size: str | None) -> tuple[list[bytearray], GstVideo.VideoInfo]:
    """Every frame of the clip, decoded to I420 at ``size``."""
    scale = ""
    if size:
        w, h = size.lower().split("x")
        scale = f",width={int(w)},height={int(h)}"
    desc = (
        f'filesrc location="{path}" ! decodebin ! videoconvert ! videoscale '
        f"! video/x-raw,format=I420,pixel-aspect-ratio=1/1{scale} ! appsink name=sink sync=false"
    )
    pipe = Gst.parse_launch(desc)
    sink = pipe.get_by_name("sink")
    pipe.set_state(Gst.State.PLAYING)
    bus, frames, info = pipe.get_bus(), [], None
    while True:
        sample = sink.emit("try-pull-sample", Gst.SECOND)
        if sample is None:
            if sink.get_property("eos"):
                break
            msg = bus.pop_filtered(Gst.MessageType.ERROR)
            if msg is not None:
                pipe.set_state(Gst.State.NULL)
                sys.exit(f"rtsp_server: cannot decode {path}: {msg.parse_error()[0].message}")
            continue
        if info is None:
            info = GstVideo.VideoInfo.new_from_caps(sample.get_caps())
        buf = sample.get_buffer()
        ok, mapped = buf.map(Gst.MapFlags.READ)
        frames.append(bytearray(mapped.data))
        buf.unmap(mapped)
    pipe.set_state(Gst.State.NULL)
    if not frames:
        sys.exit(f"rtsp_server: no frames decoded from {path}")
    return frames, info


def stamp(frame: bytearray, info: GstVideo.VideoInfo, ms: int) -> None:
    """Paint ``ms`` (and a checksum byte) as black and white blocks into the top rows: luma 16
    or 235, chroma neutral, so the blocks decode to grey whatever the picture's colour."""
    value = ms & 0xFFFFFFFF
    check = (sum(value.to_bytes(4, "big")) + STAMP_SALT) & 0xFF  # never all black or white
    bits = (value << 8) | check
    block = info.width // (STAMP_BITS + 4)
    y_off, y_stride = info.offset[0], info.stride[0]
    for i in range(STAMP_BITS):
        level = 235 if (bits >> (STAMP_BITS - 1 - i)) & 1 else 16
        x0 = (i + 2) * block
        for y in range(STAMP_ROWS):
            start = y_off + y * y_stride + x0
            frame[start : start + block] = bytes([level]) * block
    grey = bytes([128]) * ((STAMP_BITS + 2) * block // 2 - block)
    for plane in (1, 2):
        for y in range(STAMP_ROWS // 2):
            start = info.offset[plane] + y * info.stride[plane] + block
            frame[start : start + len(grey)] = grey


class Feeder:
    """Pushes the frames into whichever media is live, paced at ``fps``."""

    def __init__(self, frames: list[bytearray], info: GstVideo.VideoInfo, fps: float) -> None:
        self.frames, self.info, self.fps = frames, info, fps
        self.appsrc = None
        self.lock = threading.Lock()

    def configure(self, _factory, media) -> None:
        src = media.get_element().get_by_name("src")
        with self.lock:
            self.appsrc = src

    def run(self) -> None:
        t0, n = time.monotonic(), 0
        while True:
            delay = t0 + n / self.fps - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = bytearray(self.frames[n % len(self.frames)])
            stamp(frame, self.info, int(time.monotonic() * 1000))
            with self.lock:
                src = self.appsrc
            if src is not None:
                src.emit("push-buffer", Gst.Buffer.new_wrapped(bytes(frame)))
            n += 1


def encoder(args: argparse.Namespace) -> str:
    """The encoder, tuned for latency (no B-frames), and the recording branch when asked."""
    if args.codec == "h265":
        enc = f"x265enc tune=zerolatency speed-preset=ultrafast key-int-max={args.key_interval}"
    else:
        # One slice a frame unless asked: FFmpeg's RTSP reader (OpenCV's) garbles frames sent
        # as several slices, as x264's sliced threads and some IP cameras do (docs/pipeline.md).
        slices = "sliced-threads=true" if args.slices else "sliced-threads=false threads=1"
        enc = (
            f"x264enc tune=zerolatency speed-preset=ultrafast bframes=0 {slices} "
            f"key-int-max={args.key_interval}"
        )
    if args.record:  # the stream exactly as sent, for tests that compare a client's decode
        enc += (
            f" ! video/x-{args.codec},stream-format=byte-stream ! tee name=t "
            f't. ! queue ! filesink buffer-mode=unbuffered location="{args.record}" t. ! queue'
        )
    return enc


def main() -> None:
    args = parse_args()
    Gst.init(None)
    frames, info = load_frames(args.video, args.size)
    num = max(1, round(args.fps * 1000))
    caps = f"video/x-raw,format=I420,width={info.width},height={info.height},framerate={num}/1000"
    launch = (
        f"( appsrc name=src is-live=true do-timestamp=true format=time caps={caps} "
        f"! queue max-size-buffers=2 leaky=downstream ! {encoder(args)} "
        f"! rtp{args.codec}pay name=pay0 pt=96 config-interval=-1 mtu={args.mtu} )"
    )
    feeder = Feeder(frames, info, args.fps)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    factory.connect("media-configure", feeder.configure)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}")
    threading.Thread(target=feeder.run, daemon=True).start()
    print(f"ready rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
