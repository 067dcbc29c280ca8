from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from edgeseg.errors import EdgesegError
from edgeseg.export.onnx import export_onnx
from edgeseg.runtime.backends.onnxruntime import read_onnx_spec
from edgeseg.spec import METADATA_KEY, ModelSpec
from edgeseg.train.evaluate import evaluate


def test_export_embeds_spec_and_matches_torch(tiny_run, tmp_path):
    rep = export_onnx(tiny_run / "best.pt", tmp_path, simplify=True)
    path = tmp_path / "model.onnx"
    assert rep["path"] == str(path) and rep["max_abs_diff"] <= rep["tolerance"]
    assert rep["label_agreement"] > 0.999
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    spec = ModelSpec.from_json(meta[METADATA_KEY])
    assert spec.arch == "mbv3_unet_small" and spec.input_hw == (64, 128)
    assert read_onnx_spec(path) == spec
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp files left


def test_export_at_another_input_size(tiny_run, tmp_path):
    rep = export_onnx(tiny_run / "best.pt", tmp_path, input_size=(96, 160))
    assert read_onnx_spec(rep["path"]).input_hw == (96, 160)


def test_export_rejects_size_not_multiple_of_32(tiny_run, tmp_path):
    with pytest.raises(EdgesegError, match="multiples of 32"):
        export_onnx(tiny_run / "best.pt", tmp_path, input_size=(100, 128))
    assert not (tmp_path / "model.onnx").exists()


def test_export_of_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgesegError, match="not a readable edgeseg checkpoint"):
        export_onnx(bad, tmp_path / "out")


def test_export_of_foreign_torch_file(tmp_path):
    foreign = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, foreign)
    with pytest.raises(EdgesegError, match="not an edgeseg checkpoint"):
        export_onnx(foreign, tmp_path / "out")


def test_onnx_eval_equals_checkpoint_eval(tiny_run, tiny_onnx):
    """The exported model scores what the checkpoint scores (same runtime path, other backend)."""
    a = evaluate(tiny_run / "best.pt", "synthetic:16", "val", device="cpu")
    b = evaluate(tiny_onnx, "synthetic:16", "val")
    assert a["backend"] == "torch" and b["backend"] == "ort"
    assert abs(a["miou"] - b["miou"]) <= 0.002
    assert set(a) >= {"miou", "per_class_iou", "pixel_acc", "mean_dice"}
    assert np.isfinite(a["miou"])


def test_argmax_export_emits_uint8_labels(tiny_run, tiny_onnx, tmp_path):
    import onnxruntime as ort

    from edgeseg.runtime.segmenter import Segmenter

    rep = export_onnx(tiny_run / "best.pt", tmp_path, argmax=True)
    assert rep["output"] == "labels" and rep["label_agreement"] >= 0.999
    path = tmp_path / "model.argmax.onnx"
    spec = read_onnx_spec(path)
    assert spec.output.kind == "labels"
    assert [n.op_type for n in onnx.load(str(path)).graph.node][-2:] == ["ArgMax", "Cast"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 3, *spec.input_hw)).astype(np.float32)
    out = sess.run(None, {"input": x})[0]
    assert out.dtype == np.uint8 and out.shape == (2, *spec.input_hw)  # batch stays dynamic
    # the runtime takes either kind: same labels from the logits model and the labels model
    frame = np.random.default_rng(1).integers(0, 256, (90, 170, 3), dtype=np.uint8)
    a, b = Segmenter(path)(frame).labels, Segmenter(tiny_onnx)(frame).labels
    assert (a == b).mean() > 0.999


def test_fp16_export_keeps_sensitive_ops_and_io_in_fp32(tiny_run, tiny_onnx, tmp_path):
    from onnx import TensorProto

    from edgeseg.export.onnx import FP16_KEEP_FP32
    from edgeseg.runtime.segmenter import Segmenter

    rep = export_onnx(tiny_run / "best.pt", tmp_path, fp16=True)
    path = tmp_path / "model.fp16.onnx"
    assert (
        rep["path"] == str(path) and rep["precision"] == "fp16" and rep["label_agreement"] >= 0.99
    )
    assert read_onnx_spec(path).precision == "fp16"
    proto = onnx.load(str(path))
    assert proto.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    assert {i.data_type for i in proto.graph.initializer if i.name in conv_weights} == {
        TensorProto.FLOAT16
    }
    # the kept ops compute in FP32: every input reaching them is a Cast to float (or a float tensor)
    kept = [n for n in proto.graph.node if n.op_type in FP16_KEEP_FP32]
    assert kept, "the models use GlobalAveragePool/ReduceMean in their SE blocks"
    casts_to_fp32 = {
        n.output[0]
        for n in proto.graph.node
        if n.op_type == "Cast"
        and next(a.i for a in n.attribute if a.name == "to") == TensorProto.FLOAT
    }
    assert all(n.input[0] in casts_to_fp32 for n in kept)
    frame = np.random.default_rng(2).integers(0, 256, (80, 150, 3), dtype=np.uint8)
    assert (Segmenter(path)(frame).labels == Segmenter(tiny_onnx)(frame).labels).mean() > 0.99


def test_fp16_with_argmax_and_simplify_is_a_valid_labels_model(tiny_run, tiny_onnx, tmp_path):
    """--argmax --fp16 and --simplify --fp16 each wrote an invalid graph (the FP16 converter
    mistyped its casts): labels come out, agreeing with the FP32 logits model's argmax."""
    import onnxruntime as ort

    rep = export_onnx(tiny_run / "best.pt", tmp_path, simplify=True, argmax=True, fp16=True)
    assert Path(rep["path"]).name == "model.argmax.fp16.onnx" and rep["output"] == "labels"
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 128)).astype(np.float32)
    labels = ort.InferenceSession(rep["path"]).run(None, {"input": x})[0]
    logits = ort.InferenceSession(str(tiny_onnx)).run(None, {"input": x})[0]
    assert labels.dtype == np.uint8 and labels.shape == (1, 64, 128)
    assert (labels == logits.argmax(1)).mean() > 0.99  # FP16 may flip near-ties only
