"""`edgeseg stream` against a naive single-thread loop, same ONNX model, same machine, one run.

    python benchmarks/stream_vs_naive.py --model runs/small/model.onnx \
        [--video V] [--repeats 3] [--json OUT]

The naive loop is what most projects ship: cv2 read -> cv2.dnn.blobFromImage -> ONNX Runtime ->
NumPy argmax -> cv2.resize -> palette lookup -> cv2.addWeighted -> VideoWriter, one frame at a time.
edgeseg runs the CLI (`--mode every-frame --record --report --save-masks`) on the same video.
Checks: every frame out, and on sampled frames the streamed labels equal the NumPy reference
path (`edgeseg.runtime.kernels.reference`) exactly; they are also compared with the whole
graph run by ONNX Runtime (its own final resize, which edgeseg moves into the post-processing
kernel), where float rounding in the resize may flip a near-tie. Then the realtime mode on the
synthetic camera: p99 latency against p50.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

VIDEO = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video" / "dashcam_960x540.mp4"
)


def naive_loop(model: str, video: str, out: str) -> dict:
    import onnxruntime as ort

    from edgeseg.runtime.backends.onnxruntime import read_onnx_spec
    from edgeseg.runtime.kernels.reference import palette_lut_bgr

    spec = read_onnx_spec(model)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    lut = palette_lut_bgr(spec.palette)
    std = np.asarray(spec.input.std, np.float32).reshape(1, 3, 1, 1)
    cap = cv2.VideoCapture(video)
    writer = None
    n = 0
    t0 = time.perf_counter()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        blob = cv2.dnn.blobFromImage(
            frame, 1.0, (spec.input.width, spec.input.height), spec.input.mean, swapRB=True
        )
        logits = sess.run(None, {name: blob / std})[0]
        labels = logits[0].argmax(0).astype(np.uint8)
        labels = cv2.resize(labels, frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        vis = cv2.addWeighted(frame, 0.5, lut[labels], 0.5, 0)
        if writer is None:
            writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), 25, frame.shape[1::-1])
        writer.write(vis)
        n += 1
    writer.release()
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": round(dt, 3), "fps": round(n / dt, 3)}


def edgeseg_stream(model: str, video: str, tmp: Path) -> dict:
    """The issue's command, timed; then once more with --save-masks for the label check (untimed:
    writing 221 PNGs is not part of the comparison)."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeseg",
            "stream",
            "--source",
            video,
            "--model",
            model,
            "--mode",
            "every-frame",
            "--record",
            str(tmp / "out.mp4"),
            "--report",
            str(tmp / "r.json"),
        ],
        check=True,
        capture_output=True,
    )
    wall = time.perf_counter() - t0
    report = json.loads((tmp / "r.json").read_text())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeseg",
            "stream",
            "--source",
            video,
            "--model",
            model,
            "--mode",
            "every-frame",
            "--save-masks",
            str(tmp / "masks"),
        ],
        check=True,
        capture_output=True,
    )
    return {**report, "wall_s_with_startup": round(wall, 3)}


def check_labels(model: str, video: str, masks: Path, every: int = 20) -> dict:
    from edgeseg.runtime import Segmenter, kernels

    kernels.set_backend("reference")
    seg = Segmenter(model)
    whole = Segmenter(model, fuse_resize=False)  # ONNX Runtime does the model's final resize
    cap = cv2.VideoCapture(video)
    checked = mismatched = whole_diff = pixels = 0
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            got = cv2.imread(str(masks / f"{i:06d}.png"), cv2.IMREAD_UNCHANGED)
            mismatched += int((got != seg(frame).labels).sum())
            whole_diff += int((got != whole(frame).labels).sum())
            pixels += got.size
            checked += 1
        i += 1
    kernels.set_backend("cpu" if kernels._cpu is not None else "reference")
    return {
        "frames_checked": checked,
        "pixels_different": mismatched,
        "pixels": pixels,
        "pixels_different_from_whole_graph": whole_diff,
    }


def realtime_latency(model: str, tmp: Path, seconds: float = 10.0) -> dict:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeseg",
            "stream",
            "--source",
            "synthetic:960x540@25",
            "--model",
            model,
            "--duration",
            str(seconds),
            "--record",
            str(tmp / "rt.mp4"),
            "--report",
            str(tmp / "rt.json"),
        ],
        check=True,
        capture_output=True,
    )
    r = json.loads((tmp / "rt.json").read_text())
    lat = r["latency_ms"]
    return {
        "fps": r["fps"],
        "frames_dropped": r["frames_dropped"],
        "latency_ms": lat,
        "p99_over_p50": round(lat["p99"] / lat["p50"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", default=str(VIDEO))
    ap.add_argument("--json")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="alternate naive and edgeseg runs this many times; the medians are compared",
    )
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        naives, ourss = [], []
        for _ in range(a.repeats):  # alternating, so drifts in machine load hit both sides alike
            naives.append(naive_loop(a.model, a.video, str(tmp / "naive.mp4")))
            ourss.append(edgeseg_stream(a.model, a.video, tmp))
        naive = sorted(naives, key=lambda r: r["fps"])[len(naives) // 2]
        ours = sorted(ourss, key=lambda r: r["fps"])[len(ourss) // 2]
        labels = check_labels(a.model, a.video, tmp / "masks")
        rt = realtime_latency(a.model, tmp)
    res = {
        "naive": naive,
        "edgeseg_stream": ours,
        "speedup_fps": round(ours["fps"] / naive["fps"], 3),
        "naive_fps_runs": [r["fps"] for r in naives],
        "edgeseg_fps_runs": [r["fps"] for r in ourss],
        "all_frames_out": ours["frames_out"] == naive["frames"],
        "labels_vs_reference": labels,
        "realtime_synthetic": rt,
        "machine": f"{__import__('platform').processor() or 'cpu'}",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(res, indent=2))
    print(
        f"\nmedian of {a.repeats}: naive {naive['fps']:.1f} FPS, edgeseg stream {ours['fps']:.1f} "
        "FPS: "
        f"x{res['speedup_fps']:.2f} (runs: naive {res['naive_fps_runs']}, edgeseg "
        f"{res['edgeseg_fps_runs']}); "
        f"{ours['frames_out']}/{naive['frames']} frames; {labels['pixels_different']} label pixels "
        "differ from "
        f"the reference on {labels['frames_checked']} frames "
        f"({labels['pixels_different_from_whole_graph']} of "
        f"{labels['pixels']} from the whole graph on ONNX Runtime); realtime p99/p50 = "
        f"{rt['p99_over_p50']}"
    )
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
