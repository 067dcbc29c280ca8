import json

import cv2

from edgeseg.demo import DemoConfig, run_demo


def test_demo_runs_the_whole_flow(tmp_path):
    """The README's first command on a short training budget: every artefact appears, sound."""
    summary = run_demo(DemoConfig(str(tmp_path), seconds=8))
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "train" / "best.pt").is_file() and (tmp_path / "model.onnx").is_file()
    cap = cv2.VideoCapture(str(tmp_path / "overlay.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, frame = cap.read()
    cap.release()
    assert ok and frame.shape == (256, 512, 3) and frames == 120
    assert 0.0 <= summary["clip_miou"] <= 1.0 and summary["fps"] > 0
    assert summary["onnx_max_abs_diff"] < 1e-2
