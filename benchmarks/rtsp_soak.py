"""Soak against a real RTSP server that dies and returns: memory, descriptors, threads, order.

    python benchmarks/rtsp_soak.py --model runs/small/model.onnx [--frames 10000] [--cycles 5]
        [--warmup 1000] [--sample-every 500] [--reader auto|gstreamer|ffmpeg]

A real gst-rtsp-server (edgeseg.testing.RtspServer, on the OS's Python) serves the dash-cam clip
at ``--fps`` (default 50, so 10,000 frames take minutes, not hours); ``edgeseg``'s stream
pipeline reads it in realtime mode with reconnect on, and the server is SIGKILLed and restarted
``--cycles`` times, evenly spread. Sampled every ``--sample-every`` frames (500) in this process:
resident memory, open file descriptors, OS threads, and child processes other than the server
(the GStreamer reader's gst-launch-1.0: one while streaming, none left behind). Reported: RSS
growth after warm-up (frame ``--warmup``), descriptors and threads at the end against warm-up,
reconnects, frames out, and whether every frame came out in send order (the server's stamp in
each frame).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dashcam_960x540.mp4"


def children(exclude: int | None) -> int:
    """Live child processes of this one, but ``exclude`` (the server)."""
    me, count = os.getpid(), 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        count += int(fields[1]) == me and fields[0] != "Z" and int(pid) != exclude
    return count


def process_sample(server: int | None = None) -> dict[str, float]:
    """RSS (MB), open descriptors, OS threads and child processes (but the server's) of this
    process, now."""
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    with open("/proc/self/status") as f:
        threads = next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
    fds = len(os.listdir("/proc/self/fd"))
    return {"rss_mb": rss, "fds": fds, "threads": threads, "children": children(server)}


def main() -> None:
    from edgeseg.runtime import Segmenter
    from edgeseg.streaming.pipeline import StreamPipeline
    from edgeseg.streaming.sinks import CallbackSink
    from edgeseg.testing import RtspServer, read_stamp, rtsp_server_missing

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--clip", default=str(CLIP))
    ap.add_argument("--frames", type=int, default=10000)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--fps", type=float, default=50.0)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--down", type=float, default=2.0, help="seconds the server stays dead")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--sample-every", type=int, default=500, help="frames between samples")
    ap.add_argument("--reader", choices=("auto", "gstreamer", "ffmpeg"), default="auto")
    ap.add_argument("--json")
    a = ap.parse_args()
    if why := rtsp_server_missing():
        raise SystemExit(f"no RTSP server here: {why}")
    w, h = (int(v) for v in a.size.split("x"))
    samples: list[dict] = []
    stamps: list[int | None] = []
    seen = threading.Event()
    lock = threading.Lock()

    def on_result(res) -> None:
        stamps.append(read_stamp(res.frame))
        n = len(stamps)
        if n % a.sample_every == 0:
            with lock:
                samples.append({"frames": n, **process_sample(server.proc and server.proc.pid)})
        if n >= a.frames:
            seen.set()

    server = RtspServer(a.clip, size=(w, h), fps=a.fps)
    server.start()
    pipe = StreamPipeline(
        Segmenter(a.model),
        [server.url],
        sinks=[CallbackSink(on_result)],
        mode="realtime",
        reconnect=True,
        reader=a.reader,
    )
    t0 = time.perf_counter()
    pipe.start()
    every = a.frames / (a.cycles + 1)
    for k in range(1, a.cycles + 1):
        while len(stamps) < k * every and pipe._alive():
            time.sleep(0.2)
        server.kill()
        time.sleep(a.down)
        server.start()
    seen.wait(timeout=a.frames / a.fps * 3 + 120)
    end = process_sample(server.proc and server.proc.pid)
    pipe.stop()
    report = pipe.join()
    server.close()
    elapsed = time.perf_counter() - t0
    after = process_sample()
    warm = next(s for s in samples if s["frames"] >= a.warmup)
    known = [s for s in stamps if s is not None]
    res = {
        "reader": a.reader,
        "frames_out": report["frames_out"],
        "frames_in": report["frames_in"],
        "dropped": report["frames_dropped"],
        "reconnects": report["reconnects"],
        "outage_s": report["outage_s"],
        "seconds": round(elapsed, 1),
        "in_order": all(x < y for x, y in zip(known, known[1:])),
        "unreadable_stamps": len(stamps) - len(known),
        "warmup": warm,
        "end_streaming": end,
        "after_stop": after,
        "rss_growth_mb": round(max(s["rss_mb"] for s in samples) - warm["rss_mb"], 1),
        "latency_ms": report["latency_ms"],
        "exit_code": report["exit_code"],
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
