"""`edgeseg stream` against a naive single-thread loop, same ONNX model, same machine, one run.

    python benchmarks/stream_vs_naive.py --model runs/small/model.onnx \
        [--video V] [--repeats 5] [--max-frames N] [--realtime-seconds 10] [--json OUT]

The naive loop is what most projects ship: cv2 read -> cv2.dnn.blobFromImage -> ONNX Runtime ->
NumPy argmax -> cv2.resize -> palette lookup -> cv2.addWeighted -> VideoWriter, one frame at a
time, as a script of its own. edgeseg runs the CLI (`--mode every-frame --record --report`) on
the same video. Both run as whole processes, alternating ``--repeats`` times; compared are the
medians of

- the **whole process** (start-up included: imports, model load, the last frame written): what
  a user waits for;
- the **FPS while streaming** (each side's own count from its first frame to its last).

Checks: every frame out; on sampled frames (a run with `--save-masks`, untimed) the streamed
labels equal the NumPy reference path (`edgeseg.runtime.kernels.reference`) exactly; they are
also compared with the whole graph run by ONNX Runtime (its own final resize, which edgeseg moves
into the post-processing kernel), where float rounding in the resize may flip a near-tie. Then
the realtime mode on the synthetic 960x540@25 camera: p99 latency against p50.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
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


def naive_loop(model: str, video: str, out: str, max_frames: int | None = None) -> dict:
    """The naive loop itself (run in a process of its own by :func:`naive_process`)."""
    import onnxruntime as ort

    # What a hand-written loop would do: no edgeseg import, the model's description read
    # straight from its metadata.
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    spec = json.loads(sess.get_modelmeta().custom_metadata_map["edgeseg"])
    name = sess.get_inputs()[0].name
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(spec["palette"])] = np.asarray(spec["palette"], np.uint8)[:, ::-1]
    size = (spec["input"]["width"], spec["input"]["height"])
    mean = spec["input"]["mean"]
    std = np.asarray(spec["input"]["std"], np.float32).reshape(1, 3, 1, 1)
    cap = cv2.VideoCapture(video)
    writer = None
    n = 0
    t0 = time.perf_counter()
    while max_frames is None or n < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        blob = cv2.dnn.blobFromImage(frame, 1.0, size, mean, swapRB=True)
        logits = sess.run(None, {name: blob / std})[0]
        labels = logits[0].argmax(0).astype(np.uint8)
        labels = cv2.resize(labels, frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        vis = cv2.addWeighted(frame, 0.5, lut[labels], 0.5, 0)
        if writer is None:
            writer = cv2.VideoWriter(out, cv2.VideoWriter_fourcc(*"mp4v"), 25, frame.shape[1::-1])
        writer.write(vis)
        n += 1
    if writer is not None:
        writer.release()
    dt = time.perf_counter() - t0
    return {"frames": n, "seconds": round(dt, 3), "fps": round(n / dt, 3)}


def _timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0, out.stdout


def naive_process(model: str, video: str, tmp: Path, max_frames: int | None) -> dict:
    """The naive loop as a whole process: this script with ``--naive``."""
    cmd = [sys.executable, __file__, "--naive", "--model", model, "--video", video,
           "--out", str(tmp / "naive.mp4")]  # fmt: skip
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    wall, stdout = _timed(cmd)
    return {**json.loads(stdout), "wall_s": round(wall, 3)}


def stream_cmd(model: str, video: str, max_frames: int | None, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "edgeseg", "stream", "--source", video, "--model", model,
           "--mode", "every-frame", *extra]  # fmt: skip
    return cmd + (["--max-frames", str(max_frames)] if max_frames else [])


def edgeseg_stream(model: str, video: str, tmp: Path, max_frames: int | None) -> dict:
    """The issue's command as a whole process: report FPS and wall time."""
    extra = ("--record", str(tmp / "out.mp4"), "--report", str(tmp / "r.json"))
    wall, _ = _timed(stream_cmd(model, video, max_frames, *extra))
    report = json.loads((tmp / "r.json").read_text())
    return {**report, "wall_s": round(wall, 3)}


def saved_masks(model: str, video: str, tmp: Path, max_frames: int | None) -> list[Path]:
    """Label PNGs of one untimed run with --save-masks (writing PNGs is not being compared),
    in frame order; they lie in the run's own folder (``masks/run-<time>-<pid>/``)."""
    folder = tmp / "masks"
    subprocess.run(
        stream_cmd(model, video, max_frames, "--save-masks", str(folder)),
        check=True,
        capture_output=True,
    )
    runs = sorted(folder.glob("run-*"))
    if len(runs) != 1:
        raise SystemExit(f"expected one run folder in {folder}, found {len(runs)}")
    return sorted(runs[0].glob("*.png"))


def check_labels(model: str, video: str, masks: list[Path], every: int = 20) -> dict:
    from edgeseg.runtime import Segmenter, kernels

    kernels.use("reference")
    seg = Segmenter(model)
    whole = Segmenter(model, fuse_resize=False)  # ONNX Runtime does the model's final resize
    cap = cv2.VideoCapture(video)
    by_index = {int(p.stem): p for p in masks}
    checked = mismatched = whole_diff = pixels = 0
    for i in range(0, max(by_index, default=-1) + 1):
        ok, frame = cap.read()
        if not ok:
            break
        if i % every == 0:
            got = cv2.imread(str(by_index[i]), cv2.IMREAD_UNCHANGED)
            mismatched += int((got != seg(frame).labels).sum())
            whole_diff += int((got != whole(frame).labels).sum())
            pixels += got.size
            checked += 1
    kernels.use("cpu" if kernels._cpu is not None else "reference")
    return {
        "frames_checked": checked,
        "pixels_different": mismatched,
        "pixels": pixels,
        "pixels_different_from_whole_graph": whole_diff,
    }


def realtime_latency(model: str, tmp: Path, seconds: float) -> dict:
    subprocess.run(
        [sys.executable, "-m", "edgeseg", "stream", "--source", "synthetic:960x540@25", "--model",
         model, "--duration", str(seconds), "--record", str(tmp / "rt.mp4"), "--report",
         str(tmp / "rt.json")],
        check=True,
        capture_output=True,
    )  # fmt: skip
    r = json.loads((tmp / "rt.json").read_text())
    lat = r["latency_ms"]
    return {
        "fps": r["fps"],
        "frames_dropped": r["frames_dropped"],
        "latency_ms": lat,
        "p99_over_p50": round(lat["p99"] / lat["p50"], 3),
    }


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def compare(a: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        naives, ours = [], []
        for _ in range(a.repeats):  # alternating, so drifts in machine load hit both sides alike
            naives.append(naive_process(a.model, a.video, tmp, a.max_frames))
            ours.append(edgeseg_stream(a.model, a.video, tmp, a.max_frames))
        masks = saved_masks(a.model, a.video, tmp, a.max_frames)
        labels = check_labels(a.model, a.video, masks)
        rt = realtime_latency(a.model, tmp, a.realtime_seconds) if a.realtime_seconds else None
    return {
        "whole_process_speedup": round(_median(naives, "wall_s") / _median(ours, "wall_s"), 3),
        "fps_speedup": round(_median(ours, "fps") / _median(naives, "fps"), 3),
        "naive_wall_s_runs": [r["wall_s"] for r in naives],
        "edgeseg_wall_s_runs": [r["wall_s"] for r in ours],
        "naive_fps_runs": [r["fps"] for r in naives],
        "edgeseg_fps_runs": [r["fps"] for r in ours],
        "frames": naives[0]["frames"],
        "all_frames_out": all(r["frames_out"] == naives[0]["frames"] for r in ours),
        "edgeseg_stages_ms_p50": {k: v["p50"] for k, v in ours[-1]["stages_ms"].items()},
        "labels_vs_reference": labels,
        "realtime_synthetic": rt,
        "machine": f"{platform.processor() or platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
    }


def summary(res: dict, repeats: int) -> str:
    lab = res["labels_vs_reference"]
    rt = res["realtime_synthetic"]
    return (
        f"median of {repeats}: whole process x{res['whole_process_speedup']:.2f} "
        f"(naive {statistics.median(res['naive_wall_s_runs']):.2f} s, edgeseg "
        f"{statistics.median(res['edgeseg_wall_s_runs']):.2f} s), streaming FPS "
        f"x{res['fps_speedup']:.2f} (naive {res['naive_fps_runs']}, edgeseg "
        f"{res['edgeseg_fps_runs']}); all {res['frames']} frames out: {res['all_frames_out']}; "
        f"{lab['pixels_different']} label pixels differ from the reference on "
        f"{lab['frames_checked']} frames ({lab['pixels_different_from_whole_graph']} of "
        f"{lab['pixels']} from the whole graph on ONNX Runtime)"
        + (f"; realtime p99/p50 = {rt['p99_over_p50']}" if rt else "")
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", required=True)
    ap.add_argument("--video", default=str(VIDEO))
    ap.add_argument("--json")
    ap.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="alternate naive and edgeseg runs this many times; the medians are compared",
    )
    ap.add_argument("--max-frames", type=int, help="frames of the video (default: all)")
    ap.add_argument(
        "--realtime-seconds", type=float, default=10.0, help="realtime run's length (0: skip)"
    )
    ap.add_argument("--naive", action="store_true", help=argparse.SUPPRESS)  # one naive run
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.naive:
        print(json.dumps(naive_loop(a.model, a.video, a.out, a.max_frames)))
        return
    res = compare(a)
    print(json.dumps(res, indent=2))
    print("\n" + summary(res, a.repeats))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
