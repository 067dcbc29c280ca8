import json

import cv2
import numpy as np
import pytest

from edgeseg.demo import DemoConfig, run_demo


def test_demo_runs_the_whole_flow(tmp_path):
    """The README's first command on a short training budget: every artefact appears, sound."""
    summary = run_demo(DemoConfig(str(tmp_path), train=True, seconds=8))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "train" / "best.pt").is_file() and (tmp_path / "model.onnx").is_file()
    cap = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (256, 512, 3) and frames == 120
    assert summary["clip_miou"] == pytest.approx(_clip_miou(tmp_path / "model.onnx"), abs=6e-5)
    # the 120 frames were segmented within the run, so faster than 120 frames in the whole
    # run's time: a frame rate off by a unit (ms taken for s) is far below that
    assert summary["fps"] > 120 / summary["total_seconds"]
    assert summary["onnx_max_abs_diff"] < 1e-2


def _clip_miou(model) -> float:
    """The mIoU of ``model`` on the demo's drive (120 frames at 256x512, seed 7), counted here."""
    from edgeseg.data.synthetic import render_clip
    from edgeseg.runtime import Segmenter

    seg = Segmenter(model)
    n = seg.spec.num_classes
    counts = np.zeros((n, n), np.int64)  # rows: truth, columns: prediction
    for rgb, mask in render_clip(120, (256, 512), seed=7):
        pred = seg(np.ascontiguousarray(rgb[..., ::-1])).labels
        keep = mask < n
        idx = mask[keep].astype(np.int64) * n + pred[keep]
        counts += np.bincount(idx, minlength=n * n).reshape(n, n)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_the_first_run_segments_real_road_video_with_the_shipped_model(tmp_path):
    """edgeseg demo, as the README's first command runs it: no training, real video."""
    from edgeseg import zoo

    summary = run_demo(DemoConfig(str(tmp_path)))
    assert summary["model"] == zoo.DEFAULT and summary["val_miou"] == zoo.card(zoo.DEFAULT).val_miou
    cap = cv2.VideoCapture(summary["files"]["video"])
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (270, 480, 3) and frames == 125  # every frame of the clip
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
