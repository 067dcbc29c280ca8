"""``edgeseg demo``: a first run in seconds.

By default the shipped road model (:mod:`edgeseg.zoo`) segments five seconds of real dash-cam
video that ship with edgeseg (``edgeseg/assets``, MIT-licensed) through the stream pipeline,
and writes the overlay video and a summary. ``--train`` runs the whole flow instead: it trains a
small model on procedural road scenes for ``--seconds``, exports it to ONNX with its ModelSpec,
and segments a synthetic drive.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg._config import setting
from edgeseg._io import atomic_path, write_text_atomic
from edgeseg.errors import EdgesegError

DEMO_MODEL = "mbv3_unet_small"
DEMO_DATA = "synthetic:400:128x256"
DEMO_SIZE = (128, 256)
CLIP_FRAMES = 120


@dataclass
class DemoConfig:
    """Everything ``edgeseg demo`` takes."""

    out: str = setting("edgeseg_demo", "folder for the overlay video and the summary")
    train: bool = setting(
        False, "train a model on procedural scenes first, export it, and segment a synthetic drive"
    )
    seconds: float = setting(60.0, "--train: the training budget", metavar="S")
    model: str | None = setting(
        None, "the model that segments the clip", default_text="the shipped road model"
    )


ASSETS = Path(__file__).resolve().parent / "assets"
CLIP = ASSETS / "dashcam_480x270.mp4"  # 5 s of Udacity's dash-cam clip, MIT (LICENSE beside it)


def _write_overlay_video(
    seg, frames: list[tuple[np.ndarray, np.ndarray]], path: Path, num_classes: int
) -> dict[str, Any]:
    import cv2

    from edgeseg.train.metrics import ConfusionMatrix

    h, w = frames[0][0].shape[:2]
    cm = ConfusionMatrix(num_classes)
    latencies = []
    with atomic_path(path) as tmp:
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
        if not writer.isOpened():
            raise EdgesegError(f"OpenCV cannot write {path}; check the folder is writable")
        try:
            for rgb, mask in frames:
                bgr = np.ascontiguousarray(rgb[..., ::-1])
                t0 = time.perf_counter()
                res = seg(bgr)
                latencies.append((time.perf_counter() - t0) * 1e3)
                cm.update(res.labels, mask)
                writer.write(res.overlay(0.5))
        finally:
            writer.release()
    return {
        "clip_miou": cm.compute().miou,
        "ms_per_frame_p50": float(np.median(latencies)),
        "fps": 1e3 / float(np.mean(latencies)),
    }


def run_demo(cfg: DemoConfig | None = None) -> dict[str, Any]:
    """The demo of ``cfg`` (see the module docstring); returns (and prints) the summary."""
    cfg = cfg or DemoConfig()
    summary = train_demo(cfg) if cfg.train else road_demo(cfg)
    write_text_atomic(Path(cfg.out) / "summary.json", json.dumps(summary, indent=2))
    _print_summary(summary)
    return summary


def road_demo(cfg: DemoConfig) -> dict[str, Any]:
    """The shipped road model on the shipped dash-cam clip, through the stream pipeline."""
    from edgeseg import zoo
    from edgeseg.runtime import Segmenter
    from edgeseg.streaming import StreamPipeline
    from edgeseg.streaming.sinks import VideoSink

    t_start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seg = Segmenter(cfg.model)
    video = VideoSink(out / "overlay.mp4", 25.0)
    report = StreamPipeline(seg, [str(CLIP)], sinks=[video], mode="every-frame").run()
    if report["exit_code"]:
        raise EdgesegError(f"the demo stream failed: {'; '.join(report['errors'][:2])}")
    about = zoo.card(seg.model_name) if zoo.is_name(cfg.model) else None
    return {
        "model": seg.model_name,
        "trained_on": about.data if about else seg.spec.source.get("dataset"),
        "val_miou": about.val_miou if about else seg.spec.source.get("val_miou"),
        "clip": f"{CLIP.name} ({report['frames_out']} frames, real dash-cam video)",
        "fps": round(report["fps"], 1),
        "latency_ms_p50": round(report["latency_ms"]["p50"], 1),
        "backend": report["backend"],
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "files": {"video": str(out / "overlay.mp4"), "summary": str(out / "summary.json")},
    }


def train_demo(cfg: DemoConfig) -> dict[str, Any]:
    """Train -> export -> segment a synthetic drive."""
    out, seconds = cfg.out, cfg.seconds
    from edgeseg._table import console as make_console
    from edgeseg.data.synthetic import render_clip
    from edgeseg.export.onnx import export_onnx
    from edgeseg.runtime import Segmenter
    from edgeseg.train.trainer import TrainConfig, train

    console = make_console(stderr=True)
    out = Path(out)
    t_start = time.perf_counter()
    console.rule(f"1/3 train {DEMO_MODEL} on procedural road scenes for {seconds:.0f} s")
    res = train(
        TrainConfig(
            data=DEMO_DATA,
            model=DEMO_MODEL,
            out=str(out / "train"),
            minutes=seconds / 60,
            batch_size=8,
            input_size=DEMO_SIZE,
            crop=DEMO_SIZE,
            scale=(0.75, 1.5),
            lr=5e-3,
            workers=1,
            val_every=1000,
        )
    )
    console.rule("2/3 export to ONNX (checked against PyTorch)")
    exp = export_onnx(out / "train" / "best.pt", out)
    console.rule(f"3/3 segment a {CLIP_FRAMES}-frame synthetic drive with ONNX Runtime")
    seg = Segmenter(out / "model.onnx")
    frames = list(render_clip(CLIP_FRAMES, (2 * DEMO_SIZE[0], 2 * DEMO_SIZE[1]), seed=7))
    clip = _write_overlay_video(seg, frames, out / "overlay.mp4", seg.spec.num_classes)
    summary = {
        "model": DEMO_MODEL,
        "train_seconds": res["train_time_s"],
        "epochs": res["epochs"],
        "val_miou": round(res["val_miou"], 4),
        "clip_miou": round(clip["clip_miou"], 4),
        "onnx_max_abs_diff": exp["max_abs_diff"],
        "ms_per_frame_p50": round(clip["ms_per_frame_p50"], 2),
        "fps": round(clip["fps"], 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "files": {
            "checkpoint": str(out / "train" / "best.pt"),
            "onnx": str(out / "model.onnx"),
            "video": str(out / "overlay.mp4"),
            "summary": str(out / "summary.json"),
        },
    }
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    from edgeseg._table import print_table

    rows = [(k, v) for k, v in summary.items() if k != "files"]
    rows += [(k, v) for k, v in summary["files"].items()]
    print_table("edgeseg demo", ["result", "value"], [(k, _shown(v)) for k, v in rows])


def _shown(value: Any) -> str:
    """One row's value as text: differences in scientific notation, other floats as given."""
    if isinstance(value, float) and value and abs(value) < 1e-3:
        return f"{value:.3e}"
    return str(value)
