"""The export chain as a user meets it: every summary row describes its own file, no export
replaces a different kind of model, and a failed export changes nothing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeseg.export.chain as artifacts
from edgeseg.errors import EdgesegError
from edgeseg.export.chain import export_model
from edgeseg.export.config import ExportConfig


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_argmax_never_replaces_the_logits_model(tiny_run, tmp_path):
    ckpt = str(tiny_run / "best.pt")
    export_model(ExportConfig(checkpoint=ckpt, out=str(tmp_path)))
    before = (tmp_path / "model.onnx").read_bytes()
    res = export_model(ExportConfig(checkpoint=ckpt, out=str(tmp_path), argmax=True))
    assert (tmp_path / "model.onnx").read_bytes() == before
    assert [Path(f["path"]).name for f in res["files"]] == ["model.argmax.onnx"]


def test_a_failed_trt_export_leaves_the_folder_unchanged(tiny_run, tmp_path, monkeypatch):
    ckpt = str(tiny_run / "best.pt")
    export_model(ExportConfig(checkpoint=ckpt, out=str(tmp_path), fp16=True))
    before = _snapshot(tmp_path)
    # Without TensorRT: refused before anything is written.
    with pytest.raises(EdgesegError, match="TensorRT"):
        export_model(ExportConfig(checkpoint=ckpt, out=str(tmp_path), fp16=True, trt=True))
    assert _snapshot(tmp_path) == before
    # TensorRT failing mid-chain, after the FP16 file was made again: still nothing changes.
    monkeypatch.setattr("edgeseg.export.config.require", lambda name: None)

    def broken_build(*args, **kwargs):
        raise EdgesegError("TensorRT could not build the engine")

    monkeypatch.setattr(artifacts, "build_engine", broken_build)
    with pytest.raises(EdgesegError, match="could not build"):
        export_model(ExportConfig(checkpoint=ckpt, out=str(tmp_path), fp16=True, trt=True))
    assert _snapshot(tmp_path) == before  # no staging folder left either


def test_the_int8_row_describes_the_int8_file_and_checks_it_against_pytorch(tiny_run, tmp_path):
    from edgeseg.export.int8 import calibration_inputs
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgeseg.runtime.backends.torch import TorchBackend

    ckpt = str(tiny_run / "best.pt")
    cfg = ExportConfig(
        checkpoint=ckpt,
        out=str(tmp_path),
        int8=True,
        calib="synthetic:8",
        target="cpu",
        keep_fp32=2,
    )
    fp32, int8 = export_model(cfg)["files"]
    path = Path(int8["path"])
    assert path.name == "model.int8-cpu.onnx" and int8["precision"] == "int8"
    assert int8["size_mb"] == round(path.stat().st_size / 2**20, 3) != fp32["size_mb"]
    assert int8["output"] == "logits" and len(int8["kept"]) == 2
    q, ref = OnnxRuntimeBackend(path, "cpu"), TorchBackend(ckpt, "cpu")
    agree = []
    for x in calibration_inputs("synthetic:8", q.spec, 8):
        agree.append(float((q.infer(x).argmax(1) == ref.infer(x).argmax(1)).mean()))
    assert int8["label_agreement"] == pytest.approx(min(agree))
    assert int8["label_agreement"] < 1.0 or int8["max_abs_diff"] > 0  # the INT8 file's own


def test_the_cli_prints_kept_layers_in_full(tiny_run, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeseg",
            "export",
            str(tiny_run / "best.pt"),
            "--out",
            str(tmp_path),
            "--int8",
            "--calib",
            "synthetic:8",
            "--target",
            "cpu",
            "--keep-fp32",
            "2",
            "--max-drop",
            "none",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [x for x in out.splitlines() if "kept in FP32" in x]  # --target cpu
    assert "…" not in out and len(lines) == 2 and all("/Conv" in x for x in lines)
    assert "model.int8-cpu.onnx" in out  # the file name whole, not cut at 80 columns


def test_int8_agreement_notes_a_poor_calibration_without_the_accuracy_check(
    tiny_run, tmp_path, monkeypatch
):
    monkeypatch.setattr(artifacts, "AGREEMENT_WARN", 1.01)  # any agreement counts as poor
    ckpt = str(tiny_run / "best.pt")
    cfg = ExportConfig(
        checkpoint=ckpt, out=str(tmp_path), int8=True, calib="synthetic:4", target="cpu",
        max_drop=None,
    )  # fmt: skip
    unchecked = export_model(cfg)["files"][-1]
    assert "--keep-fp32" in unchecked["agreement_note"] and "--calib" in unchecked["agreement_note"]
    assert "best.pt in PyTorch" in unchecked["agreement"]
    assert np.isfinite(unchecked["max_abs_diff"])
    # With the mIoU check, its per-class table speaks instead of a note on a handful of frames.
    checked = export_model(dataclasses.replace(cfg, max_drop=100.0))["files"][-1]
    assert "agreement_note" not in checked and checked["accuracy"]["max_drop"] == 100.0
