"""Soak: many synthetic frames through the stream pipeline, with resident memory sampled as it runs.

    python benchmarks/stream_soak.py --model runs/small/model.onnx [--frames 20000] [--size 640x360]
        [--warmup 1000] [--sample-every 500]

The synthetic camera is unpaced (as fast as the pipeline takes frames), in every-frame mode, with
the overlay blended and recorded to an mp4 in a temp folder and masks discarded by a callback.
Resident memory is sampled every ``--sample-every`` frames (500). Prints RSS after warm-up (frame
``--warmup``, 1,000) and at the end; the growth should stay under 20 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    from edgeseg.runtime import Segmenter
    from edgeseg.streaming.pipeline import StreamPipeline
    from edgeseg.streaming.sinks import CallbackSink, VideoSink
    from edgeseg.streaming.sources import SyntheticSource

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--sample-every", type=int, default=500, help="frames between RSS samples")
    ap.add_argument("--json")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    samples: list[tuple[int, float]] = []
    lock = threading.Lock()

    def on_result(res) -> None:
        if res.index % a.sample_every == 0:
            with lock:
                samples.append((res.index, rss_mb()))

    with tempfile.TemporaryDirectory() as d:
        seg = Segmenter(a.model)
        src = SyntheticSource((h, w), fps=0, max_frames=a.frames)
        pipe = StreamPipeline(
            seg,
            [src],
            sinks=[CallbackSink(on_result), VideoSink(Path(d) / "soak.mp4")],
            mode="every-frame",
        )
        t0 = time.perf_counter()
        report = pipe.run()
        dt = time.perf_counter() - t0
    after_warmup = next(m for i, m in samples if i >= a.warmup)
    end = samples[-1][1]
    res = {
        "frames_out": report["frames_out"],
        "seconds": round(dt, 1),
        "fps": report["fps"],
        "rss_mb_after_warmup": round(after_warmup, 1),
        "rss_mb_end": round(end, 1),
        "rss_growth_mb": round(end - after_warmup, 2),
        "rss_max_mb": round(max(m for _, m in samples), 1),
        "latency_ms": report["latency_ms"],
        "samples": samples,
    }
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
