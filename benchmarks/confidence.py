"""Per-pixel confidence on the dash-cam clip: what it costs the post-processing of a frame.

    python benchmarks/confidence.py --model runs/small/model.onnx [--repeats 7] [--frames N]

The post-processing time per 960x540 frame (labels and the overlay, as ``edgeseg stream`` does
it) with and without the confidence plane, on the model's own output (logits before the fused
trailing resize), one kernel thread as in the stream's output stage, timed in alternating
passes over the clip (``--repeats``) in thread CPU time (this machine is shared: time spent
descheduled is not the kernel's): the median of each pass's per-frame median, their difference,
and the difference of the quietest passes. Also the mean confidence over the clip.
``--frames``: the clip's first N frames.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
from smoothing import CLIP, model_outputs


def time_pass(seg, frames, scores, confidence: bool) -> float:
    """Median ms per frame of post-processing (labels and overlay; the confidence plane too)."""
    from edgeseg.runtime import kernels

    hw, times = frames[0].shape[:2], []
    conf = np.empty(hw, np.uint8) if confidence else None
    for f, s in zip(frames, scores):
        t0 = time.thread_time()
        kernels.postprocess(
            s, hw, seg.spec.palette, f, 0.5, mode=seg.mode, upsample=seg.upsample, conf_out=conf
        )
        times.append((time.thread_time() - t0) * 1e3)
    return statistics.median(times)


def mean_confidence(seg, frames, scores) -> float:
    from edgeseg.runtime import kernels

    conf = np.empty(frames[0].shape[:2], np.uint8)
    means = []
    for s in scores:
        kernels.postprocess(s, conf.shape, mode=seg.mode, upsample=seg.upsample, conf_out=conf)
        means.append(conf.mean() / 255)
    return float(np.mean(means))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an exported model.onnx (class scores out)")
    ap.add_argument("--clip", default=str(CLIP))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--frames", type=int, help="use only the clip's first N frames")
    ap.add_argument("--json")
    a = ap.parse_args()
    from edgeseg.runtime import kernels

    kernels._cpu.set_num_threads(1)  # as in the stream: one thread per stage
    seg, frames, scores = model_outputs(a.model, Path(a.clip), a.frames)
    plain, with_conf = [], []
    for r in range(a.repeats):  # alternate which goes first: drift hits both alike
        order = [(False, plain), (True, with_conf)]
        for confidence, out in order if r % 2 == 0 else order[::-1]:
            out.append(time_pass(seg, frames, scores, confidence))
    res = {
        "model": a.model,
        "frames": len(frames),
        "frame_hw": list(frames[0].shape[:2]),
        "scores_shape": list(scores[0].shape),
        "upsample": seg.upsample,
        "mean_confidence": round(mean_confidence(seg, frames, scores), 4),
        "post_ms": round(statistics.median(plain), 4),
        "post_confidence_ms": round(statistics.median(with_conf), 4),
        "extra_ms": round(statistics.median(with_conf) - statistics.median(plain), 4),
        "extra_quietest_ms": round(min(with_conf) - min(plain), 4),
        "repeats": a.repeats,
        "machine": platform.processor() or platform.machine(),
    }
    print(
        f"post-processing {res['post_ms']:.3f} -> {res['post_confidence_ms']:.3f} ms a frame with "
        f"confidence (+{res['extra_ms']:.3f} ms; quietest passes "
        f"+{res['extra_quietest_ms']:.3f} ms; scores {tuple(scores[0].shape)} x{seg.upsample}, "
        f"frames {frames[0].shape[1]}x{frames[0].shape[0]}); mean confidence "
        f"{res['mean_confidence']:.3f}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
