"""Glass-to-label latency over RTSP in realtime mode, and whether it grows over a long run.

    python benchmarks/rtsp_latency.py --model runs/small/model.onnx [--minutes 10]
        [--reader ffmpeg|gstreamer] [--transport tcp|udp] [--size 960x540] [--fps 25] [--slices]

A real gst-rtsp-server (edgeseg.testing.RtspServer) serves the dash-cam clip at ``--fps``; each
frame carries its send time, painted into its pixels before H.264 encoding. ``edgeseg``'s stream
pipeline reads the stream in realtime mode (``--reader ffmpeg``: through OpenCV/FFmpeg;
``gstreamer``: rtspsrc and avdec_h264, edgeseg.streaming.rtsp) and a sink reads the
stamp back when the labels arrive: glass (server send) to labels, through encoding, the network
stack, decoding, buffering, pre-processing, the model and post-processing, on one clock.
Reported: p50/p99 over the run, p99/p50, and p50 and p99 of the first and the last minute.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dashcam_960x540.mp4"


def pcts(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
    }


def main() -> None:
    from edgeseg.runtime import Segmenter
    from edgeseg.streaming.pipeline import StreamPipeline
    from edgeseg.streaming.sinks import CallbackSink
    from edgeseg.testing import RtspServer, rtsp_server_missing, stamp_age_ms

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--clip", default=str(CLIP))
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--reader", choices=("ffmpeg", "gstreamer"), default="ffmpeg")
    ap.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--size", default="960x540")
    ap.add_argument("--fps", type=float, default=25.0)
    ap.add_argument("--slices", action="store_true", help="the server sends several slices a frame")
    ap.add_argument("--json")
    a = ap.parse_args()
    if why := rtsp_server_missing():
        raise SystemExit(f"no RTSP server here: {why}")
    w, h = (int(v) for v in a.size.split("x"))
    samples: list[tuple[float, float]] = []  # (seconds into the run, glass-to-label ms)
    t0 = time.monotonic()

    def on_result(res) -> None:
        now = time.monotonic()
        age = stamp_age_ms(res.frame, now)
        if age is not None:
            samples.append((now - t0, age))

    with RtspServer(a.clip, size=(w, h), fps=a.fps, slices=a.slices) as server:
        pipe = StreamPipeline(
            Segmenter(a.model),
            [server.url],
            reader=a.reader,
            sinks=[CallbackSink(on_result)],
            mode="realtime",
            rtsp_transport=a.transport,
            duration=a.minutes * 60,
        )
        t0 = time.monotonic()
        report = pipe.run()
    ages = [ms for _, ms in samples]
    first = [ms for t, ms in samples if t < 60]
    last = [ms for t, ms in samples if t >= samples[-1][0] - 60]
    res = {
        "reader": a.reader,
        "transport": a.transport,
        "slices": a.slices,
        "unreadable_stamps": report["frames_out"] - len(ages),
        "size": a.size,
        "fps_sent": a.fps,
        "minutes": a.minutes,
        "frames_out": report["frames_out"],
        "frames_dropped": report["frames_dropped"],
        "fps_out": report["fps"],
        "glass_to_label_ms": pcts(ages),
        "p99_over_p50": round(float(np.percentile(ages, 99) / np.percentile(ages, 50)), 2),
        "first_minute_ms": pcts(first),
        "last_minute_ms": pcts(last),
        "pipeline_latency_ms": report["latency_ms"],
        "stages_ms": report["stages_ms"],
    }
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
