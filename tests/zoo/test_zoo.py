"""Shipped models by name: what ships, how names resolve (a path always wins), that the stored
files score as their card says, and that the package stays small enough to ship them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg import zoo
from edgeseg.errors import EdgesegError
from edgeseg.runtime import Segmenter

REPO = Path(__file__).resolve().parents[2]


def test_every_shipped_model_has_its_card_and_files_within_size():
    assert zoo.DEFAULT in zoo.names()
    total = 0.0
    for name in zoo.names():
        c = zoo.card(name)
        assert c.name == name and c.arch and len(c.classes) == len(c.per_class_iou)
        assert 0 < c.val_miou <= 1 and c.licence and c.command and c.machine
        for kind in zoo.FILES:
            assert c.file(kind).stat().st_size <= 5 * 2**20  # at most 5 MB each
        total += c.size_mb()
    assert total <= 12  # the whole zoo


def test_a_name_resolves_a_path_wins_and_an_unknown_name_lists_the_known(tmp_path, monkeypatch):
    assert zoo.resolve("camvid-small") == zoo.card("camvid-small").file("onnx")
    assert zoo.resolve("camvid-small", "checkpoint").name == "model.pt"
    assert zoo.resolve(None) == zoo.card(zoo.DEFAULT).file("onnx")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "camvid-small").write_bytes(b"")  # a file of that name, here: it wins
    assert zoo.resolve("camvid-small") == Path("camvid-small")
    assert zoo.resolve("runs/x/model.onnx") == Path("runs/x/model.onnx")  # paths pass through
    with pytest.raises(EdgesegError, match="shipped models: camvid-small"):
        zoo.resolve("camvid-smal")


def test_the_segmenter_runs_a_shipped_model_by_name_and_by_default():
    frame = np.random.default_rng(0).integers(0, 256, (270, 480, 3), dtype=np.uint8)
    named, default = Segmenter("camvid-small"), Segmenter()
    assert named.model_name == default.model_name == "camvid-small"
    assert named.spec.classes == zoo.card("camvid-small").classes
    np.testing.assert_array_equal(named(frame).labels, default(frame).labels)


def test_the_onnx_and_the_checkpoint_are_one_model(camvid_root):
    """What the card's note says, on real frames: both stored files give the same labels
    (FP16 storage, FP32 compute; ONNX Runtime and PyTorch may round a near-tie apart)."""
    import cv2

    onnx, pt = Segmenter("camvid-small"), Segmenter("camvid-small", backend="torch")
    assert pt.backend.name == "torch"
    for path in sorted((camvid_root / "val").glob("*.png"))[:3]:
        frame = cv2.imread(str(path))
        assert (onnx(frame).labels == pt(frame).labels).mean() > 0.999


def test_the_cli_lists_the_zoo_and_exports_a_shipped_model_by_name(tmp_path):
    from edgeseg.cli import main

    assert main(["models", "--json", str(tmp_path / "m.json")]) == 0
    listed = json.loads((tmp_path / "m.json").read_text())
    assert [m["name"] for m in listed] == zoo.names()
    assert main(["export", "camvid-small", "--out", str(tmp_path / "x")]) == 0
    from edgeseg.runtime.backends.onnxruntime import read_onnx_spec

    assert read_onnx_spec(tmp_path / "x" / "model.onnx").classes == zoo.card("camvid-small").classes


def test_predict_runs_the_shipped_model_unless_given_one(tiny_onnx, tmp_path):
    import cv2

    from edgeseg.data.synthetic import render_scene

    img = tmp_path / "a.png"
    cv2.imwrite(str(img), render_scene(1, (96, 160))[0])
    from edgeseg.runtime.predict import PredictConfig, predict

    assert predict(PredictConfig([str(img)], out=str(tmp_path / "p")))["model"] == "camvid-small"
    given = predict(PredictConfig([str(tiny_onnx), str(img)], out=str(tmp_path / "q")))
    assert given["model"] == str(tiny_onnx)  # the old form: the model first


@pytest.mark.skipif(os.environ.get("EDGESEG_SKIP_WHEEL") == "1", reason="EDGESEG_SKIP_WHEEL=1")
def test_the_wheel_ships_the_zoo_and_stays_under_15_mb(tmp_path):
    import zipfile

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    wheel = next(tmp_path.glob("edgeseg-*.whl"))
    assert wheel.stat().st_size < 15 * 2**20
    names = zipfile.ZipFile(wheel).namelist()
    for f in ("model.onnx", "model.pt", "card.json"):
        assert f"edgeseg/zoo/camvid-small/{f}" in names
    assert "edgeseg/assets/dashcam_480x270.mp4" in names
