"""Temporal smoothing on the dash-cam clip: how much steadier the labels get, and what it costs.

    python benchmarks/smoothing.py --model runs/small/model.onnx [--smooth 0.5] [--repeats 7]
        [--frames N]

Flicker is the fraction of pixels whose label changes between consecutive frames at 960x540,
averaged over the clip, without smoothing and with ``--smooth A`` (the labels ``edgeseg stream``
would produce: the same kernels, frames in order). Cost is the post-processing time per frame
with and without the moving-average update, both the runtime's kernels on the model's own
output (logits before the fused trailing resize), timed in alternating passes over the clip
(``--repeats``), the median of each pass's per-frame median, and their difference. ``--frames``
uses only the clip's first N frames (default: all of it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "video" / "dashcam_960x540.mp4"


def model_outputs(model: str, clip: Path, max_frames: int | None = None):
    """The Segmenter, the clip's (first ``max_frames``) frames and the model's output for each
    (as post-processing gets it)."""
    from edgeseg.runtime import Segmenter
    from edgeseg.streaming.sources import open_source

    seg = Segmenter(model)
    with open_source(str(clip)) as src:
        frames = [f.image for f in itertools.islice(src, max_frames)]
    scores = [seg.infer(seg.prepare([f])).copy() for f in frames]
    return seg, frames, scores


def labels_of(seg, frames, scores, keep: float) -> list[np.ndarray]:
    from edgeseg.runtime.smoothing import SmoothState

    state = SmoothState(keep) if keep else None
    return [seg.finish(s, f, smooth=state).labels for f, s in zip(frames, scores)]


def flicker(labels: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(a != b) for a, b in zip(labels, labels[1:])]))


def time_pass(seg, frames, scores, keep: float) -> float:
    """Median ms per frame of post-processing (with the average's update when ``keep``)."""
    from edgeseg.runtime import kernels
    from edgeseg.runtime.smoothing import SmoothState

    state, times = SmoothState(keep) if keep else None, []
    hw = frames[0].shape[:2]
    for s in scores:
        t0 = time.perf_counter()
        x = state.update(s) if state is not None else s
        kernels.postprocess(x, hw, mode=seg.mode, upsample=seg.upsample)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="an exported model.onnx (class scores out)")
    ap.add_argument("--clip", default=str(CLIP))
    ap.add_argument("--smooth", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--frames", type=int, help="use only the clip's first N frames, at least 2 (default: all)"
    )
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.frames is not None and a.frames < 2:
        ap.error("--frames must be at least 2 (flicker compares consecutive frames)")
    from edgeseg.runtime import kernels

    kernels._cpu.set_num_threads(1)  # as in the stream: one thread per stage
    seg, frames, scores = model_outputs(a.model, Path(a.clip), a.frames)
    plain = flicker(labels_of(seg, frames, scores, 0.0))
    smooth = flicker(labels_of(seg, frames, scores, a.smooth))
    post, post_smooth = [], []
    for r in range(a.repeats):  # alternate which goes first: drift hits both alike
        order = [(0.0, post), (a.smooth, post_smooth)]
        for keep, out in order if r % 2 == 0 else order[::-1]:
            out.append(time_pass(seg, frames, scores, keep))
    res = {
        "model": a.model,
        "frames": len(frames),
        "frame_hw": list(frames[0].shape[:2]),
        "scores_shape": list(scores[0].shape),
        "smooth": a.smooth,
        "flicker_plain": round(plain, 5),
        "flicker_smoothed": round(smooth, 5),
        "flicker_drop": round(1 - smooth / plain, 4) if plain else None,
        "post_ms": round(statistics.median(post), 4),
        "post_smoothed_ms": round(statistics.median(post_smooth), 4),
        "extra_ms": round(statistics.median(post_smooth) - statistics.median(post), 4),
        "repeats": a.repeats,
        "machine": platform.processor() or platform.machine(),
    }
    print(
        f"flicker {plain:.4f} -> {smooth:.4f} at --smooth {a.smooth} "
        f"({100 * res['flicker_drop']:.1f}% fewer label changes); post-processing "
        f"{res['post_ms']:.3f} -> {res['post_smoothed_ms']:.3f} ms a frame "
        f"(+{res['extra_ms']:.3f} ms; scores {tuple(scores[0].shape)}, frames "
        f"{frames[0].shape[1]}x{frames[0].shape[0]})"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
