"""benchmarks/stream_vs_naive.py on a few frames: the figures it promises, the label check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from edgeseg.data.synthetic import write_clip

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "stream_vs_naive.py"


def test_stream_vs_naive_runs_both_sides_and_checks_the_labels(tiny_onnx, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", 25, (96, 160), fps=25)
    out = tmp_path / "res.json"
    cmd = [sys.executable, str(SCRIPT), "--model", str(tiny_onnx), "--video", str(clip),
           "--repeats", "1", "--max-frames", "21", "--realtime-seconds", "1",
           "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["frames"] == 21 and res["all_frames_out"]
    labels = res["labels_vs_reference"]
    assert labels["frames_checked"] == 2  # frames 0 and 20 of the saved masks
    assert labels["pixels_different"] == 0 and labels["pixels"] == 2 * 96 * 160
    assert res["whole_process_speedup"] > 0 and res["fps_speedup"] > 0
    assert res["realtime_synthetic"]["latency_ms"]["p50"] > 0
    assert "whole process x" in proc.stdout
