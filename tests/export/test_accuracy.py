"""INT8 with an accuracy guarantee: the file written loses at most --max-drop mIoU points on
held-out frames (measured again here with `edgeseg eval`'s own code), the most sensitive layers go
back to float until it does, an impossible budget writes nothing, and calibration is cached."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.export import accuracy
from edgeseg.export.chain import export_model
from edgeseg.export.config import ExportConfig
from edgeseg.runtime.backends.onnxruntime import read_onnx_spec
from edgeseg.train.evaluate import evaluate


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESEG_CACHE", str(tmp_path / "cache"))


def _int8(tiny_run, out: Path, **kw) -> ExportConfig:
    kw = {"target": "cpu", "calib_count": 8, **kw}
    return ExportConfig(checkpoint=str(tiny_run / "best.pt"), out=str(out), int8=True, **kw)


def _penalised(monkeypatch, points_unless_kept: dict[int, float]) -> None:
    """The real measurement, with INT8 files keeping fewer layers than a key made to lose that
    many more points: a model whose quantization hurts until enough layers stay in float."""
    real = accuracy.measure

    def measure(path, data, target, int8):
        res = real(path, data, target, int8)
        if int8:
            kept = len(read_onnx_spec(path).source["int8"]["kept"])
            res["miou"] -= points_unless_kept.get(kept, 0.0) / 100
        return res

    monkeypatch.setattr(accuracy, "measure", measure)


@pytest.mark.parametrize("count,cap,expected", [(0, 8, [0, 1, 2, 4, 8]), (2, 8, [2, 4, 8]),
                                                (0, 6, [0, 1, 2, 4, 6]), (0, 0, [0])])  # fmt: skip
def test_each_round_doubles_the_layers_kept_up_to_the_cap(count, cap, expected):
    assert accuracy.kept_counts(count, cap) == expected


def test_the_written_file_meets_the_budget_measured_as_eval_measures_it(tiny_run, tmp_path):
    # The TensorRT target: the check runs the Q/DQ nodes as written, as TensorRT does.
    res = export_model(_int8(tiny_run, tmp_path, target="trt", max_drop=50.0))
    fp32, int8 = res["files"]
    acc = int8["accuracy"]
    assert acc["drop_points"] <= 50.0 and acc["held_out_images"] == 4  # synthetic:16's val split
    again = evaluate(int8["path"], "synthetic:16", "val", "ort", "cpu", exact_qdq=True)
    assert acc["int8_miou"] == pytest.approx(again["miou"], abs=1e-4)
    assert acc["fp32_miou"] == pytest.approx(evaluate(fp32["path"], "synthetic:16")["miou"], 1e-3)
    assert set(acc["per_class"]) == set(again["per_class_iou"])
    # Calibrated on what the checkpoint records having been trained on: no --calib was given.
    assert read_onnx_spec(int8["path"]).source["int8"]["calib"] == "synthetic:16"


def test_layers_go_back_to_float_until_the_budget_holds(tiny_run, tmp_path, monkeypatch):
    _penalised(monkeypatch, {0: 30.0, 1: 30.0})
    int8 = export_model(_int8(tiny_run, tmp_path, max_drop=20.0))["files"][-1]
    acc = int8["accuracy"]
    assert [r["kept"] for r in acc["rounds"]] == [0, 1, 2]
    recorded = read_onnx_spec(int8["path"]).source["int8"]["kept"]
    assert len(int8["kept"]) == 2 and recorded == int8["kept"]
    assert set(acc["kept_why"]) == set(int8["kept"])  # each with its SQNR


def test_an_impossible_budget_fails_in_one_line_and_writes_nothing(
    tiny_run, tmp_path, monkeypatch, capsys
):
    from edgeseg.cli import main

    out = tmp_path / "out"
    export_model(ExportConfig(checkpoint=str(tiny_run / "best.pt"), out=str(out)))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    _penalised(monkeypatch, {k: 90.0 for k in range(8)})
    argv = ["export", str(tiny_run / "best.pt"), "--out", str(out), "--int8", "--max-drop", "5",
            "--max-kept", "2", "--calib-count", "4", "--target", "cpu"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert line.startswith("edgeseg export: error: INT8 loses")
    assert "0 kept: " in line and "1 kept: " in line and "2 kept: " in line
    assert "--max-drop" in line and "nothing was written" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_calibration_is_cached_per_model_frames_and_method(tiny_run, tmp_path):
    cfg = _int8(tiny_run, tmp_path, max_drop=None, calib="synthetic:8")
    first = export_model(cfg)["files"][-1]
    assert "computed and cached" in first["calibration"]
    second = export_model(cfg)["files"][-1]
    assert "reused from the cache" in second["calibration"]
    assert Path(first["path"]).read_bytes() == Path(second["path"]).read_bytes()
    other_frames = export_model(dataclasses.replace(cfg, calib_count=4))["files"][-1]
    assert "computed" in other_frames["calibration"]
    other_method = export_model(dataclasses.replace(cfg, calib_method="percentile"))["files"][-1]
    assert "computed" in other_method["calibration"]
    assert len(list((tmp_path / "cache" / "calibration").glob("*.json"))) == 3


def test_training_data_not_on_this_machine_is_named_before_anything_is_written(tiny_run, tmp_path):
    ckpt = torch.load(tiny_run / "best.pt", weights_only=True)
    ckpt["spec"]["source"]["dataset"] = "camvid:/nowhere/camvid"
    moved = tmp_path / "moved.pt"
    torch.save(ckpt, moved)
    out = tmp_path / "out"
    with pytest.raises(EdgesegError, match="/nowhere/camvid.*--calib.*--data"):
        export_model(ExportConfig(checkpoint=str(moved), out=str(out), int8=True))
    assert not out.exists() or not list(out.iterdir())
    # --data given: calibration and the check use it instead
    res = export_model(ExportConfig(checkpoint=str(moved), out=str(out), int8=True,
                                    data="synthetic:16", target="cpu", max_drop=100.0))  # fmt: skip
    assert res["files"][-1]["accuracy"]["held_out_images"] == 4


def test_a_dataset_without_readable_val_frames_is_named(tmp_path):
    with pytest.raises(EdgesegError, match="held-out frames.*--max-drop none"):
        accuracy.held_out(f"camvid:{tmp_path}")


def test_layers_kept_for_tensorrt_run_in_fp16_islands_that_compute_what_fp32_does(
    tiny_onnx, tmp_path, monkeypatch
):
    import numpy as np
    import onnx
    from onnx import TensorProto

    from edgeseg.export import int8
    from edgeseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    job = int8.Int8Export(tiny_onnx, "synthetic:8", 4, ("minmax", "trt"))
    try:
        kept = job.ranked()[:2]
        half = job.write(tmp_path / "half.onnx", kept)
        monkeypatch.setitem(int8.KEPT_PRECISION, "trt", "fp32")
        full = job.write(tmp_path / "full.onnx", kept)
    finally:
        job.close()
    assert half["kept_precision"] == "fp16" and full["kept_precision"] == "fp32"
    graph = onnx.load(str(half["path"])).graph
    inits = {t.name: t for t in graph.initializer}
    made = {o: n for n in graph.node for o in n.output}
    for node in (n for n in graph.node if n.name in kept):
        assert inits[node.input[1]].data_type == TensorProto.FLOAT16
        cast_in = made[node.input[0]]
        assert cast_in.op_type == "Cast" and cast_in.attribute[0].i == TensorProto.FLOAT16
        (cast_out,) = [n for n in graph.node if node.output[0] in n.input]
        assert cast_out.op_type == "Cast" and cast_out.attribute[0].i == TensorProto.FLOAT
    assert len([n for n in graph.node if n.op_type == "Cast"]) == 4
    a, b = OnnxRuntimeBackend(half["path"], "cpu"), OnnxRuntimeBackend(full["path"], "cpu")
    for x in int8.calibration_inputs("synthetic:8", a.spec, 2):
        ya, yb = a.infer(x), b.infer(x)
        assert np.abs(ya - yb).max() <= 0.02 * np.abs(yb).max()
        assert (ya.argmax(1) == yb.argmax(1)).mean() > 0.99
