"""Per-pixel confidence on the dash-cam clip: what it costs the post-processing of a frame.

    python benchmarks/confidence.py --model runs/small/model.onnx [--repeats 7] [--frames N]

The post-processing time per 960x540 frame (labels and the overlay, as ``edgeseg stream`` does
it) with and without the confidence plane, on the model's own output (logits before the fused
trailing resize), one kernel thread as in the stream's output stage, timed in
thread CPU time (this machine is shared: time spent descheduled is not the kernel's). Each
frame is post-processed ``--repeats`` times without and with confidence, back to back in
alternating order, so that both see the same moments of a noisy machine, and the quickest of
each counts (noise only adds time): the extra cost is the median over the clip's frames of
those per-frame differences. Also the mean confidence over the clip.
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


def post_ms(seg, frame, scores, conf) -> float:
    """Thread CPU ms of one frame's post-processing (labels, overlay; ``conf``: the plane too)."""
    from edgeseg.runtime import kernels

    t0 = time.thread_time()
    hw, up = frame.shape[:2], seg.upsample
    kernels.postprocess(
        scores, hw, seg.spec.palette, frame, 0.5, mode=seg.mode, upsample=up, conf_out=conf
    )
    return (time.thread_time() - t0) * 1e3


def time_frames(seg, frames, scores, repeats: int) -> tuple[list[float], list[float]]:
    """Each frame post-processed ``repeats`` times without and with confidence, alternating
    which goes first: the quickest time of each, per frame (noise only ever adds time)."""
    conf = np.empty(frames[0].shape[:2], np.uint8)
    plain, with_conf = [], []
    for f, s in zip(frames, scores):
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(repeats):
            for c in (False, True) if r % 2 == 0 else (True, False):
                times[c].append(post_ms(seg, f, s, conf if c else None))
        plain.append(min(times[False]))
        with_conf.append(min(times[True]))
    return plain, with_conf


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
    plain, with_conf = time_frames(seg, frames, scores, a.repeats)
    res = {
        "model": a.model,
        "frames": len(frames),
        "frame_hw": list(frames[0].shape[:2]),
        "scores_shape": list(scores[0].shape),
        "upsample": seg.upsample,
        "mean_confidence": round(mean_confidence(seg, frames, scores), 4),
        "post_ms": round(statistics.median(plain), 4),
        "post_confidence_ms": round(statistics.median(with_conf), 4),
        "extra_ms": round(statistics.median(b - a for a, b in zip(plain, with_conf)), 4),
        "repeats": a.repeats,
        "frame_ms": [round(x, 4) for x in plain],
        "frame_confidence_ms": [round(x, 4) for x in with_conf],
        "machine": platform.processor() or platform.machine(),
    }
    print(
        f"post-processing {res['post_ms']:.3f} -> {res['post_confidence_ms']:.3f} ms a frame with "
        f"confidence (+{res['extra_ms']:.3f} ms; scores {tuple(scores[0].shape)} x{seg.upsample}, "
        f"frames {frames[0].shape[1]}x{frames[0].shape[0]}); mean confidence "
        f"{res['mean_confidence']:.3f}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
