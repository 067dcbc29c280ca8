"""Quantization-aware fine-tuning: exact BN folding, the export's integer grids, a real QAT run."""

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from edgeseg.cli import main
from edgeseg.export.qat import QuantConv2d, prepare_qat, restore
from edgeseg.models import create_model, list_models
from edgeseg.models.checkpoint import read_checkpoint


def _randomise_bn(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("name", list_models())
def test_prepare_folds_bn_exactly_and_restore_puts_the_model_back(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=5).eval()
    _randomise_bn(model)
    keys = list(model.state_dict())
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        swaps = prepare_qat(model, "trt")
        assert sum(isinstance(m, QuantConv2d) for m in model.modules()) == convs
        assert any(m.bn is not None for m in model.modules() if isinstance(m, QuantConv2d))
        model.apply(torch.ao.quantization.disable_fake_quant)
        folded = model(x)
        restore(swaps)
        back = model(x)
    torch.testing.assert_close(folded, ref, atol=1e-4, rtol=1e-4)  # folding is exact up to rounding
    assert torch.equal(back, ref)
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_under_fake_quantization(name):
    from edgeseg.train.losses import build_loss, segmentation_loss

    model = create_model(name, num_classes=5)
    prepare_qat(model, "cpu")
    model.train()  # bisenetv2 returns its auxiliary heads too
    loss, main = segmentation_loss(
        model(torch.randn(2, 3, 64, 96)),
        torch.randint(0, 5, (2, 64, 96)),
        build_loss("ce+dice", 255),
    )
    loss.backward()
    assert main.shape == (2, 5, 64, 96) and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("target, lo, hi, w_max", [("trt", -127, 127, 127), ("cpu", 0, 255, 64)])
def test_fake_quant_uses_the_grids_onnx_runtime_writes(target, lo, hi, w_max):
    conv, bn = nn.Conv2d(4, 6, 3, bias=False), nn.BatchNorm2d(6).eval()
    q = QuantConv2d(conv, bn, target).train()
    x = torch.randn(2, 4, 8, 8) * 3 + (2 if target == "cpu" else 0)
    q(x)
    w, _ = q._folded()
    absmax = w.detach().abs().amax((1, 2, 3))
    torch.testing.assert_close(
        q.weight_fq.scale, absmax / w_max
    )  # symmetric per-channel INT8 (7-bit for cpu)
    assert not q.weight_fq.zero_point.any()
    assert (q.input_fq.quant_min, q.input_fq.quant_max) == (lo, hi)
    if target == "trt":
        assert int(q.input_fq.zero_point) == 0
    qw = q.weight_fq(w) / q.weight_fq.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(qw, qw.round())  # weights land on the integer grid


def test_export_qat_trains_and_writes_a_qdq_onnx(tiny_run, tmp_path, monkeypatch):
    from edgeseg.export import qat as qat_module
    from edgeseg.runtime.backends.onnxruntime import read_onnx_spec

    asked: list[str] = []  # the device QAT was asked to train on (--device)
    resolve = qat_module.resolve_device

    def resolve_device(device):
        asked.append(device)
        return resolve(device)

    monkeypatch.setattr(qat_module, "resolve_device", resolve_device)
    out = tmp_path / "qat"
    rc = main(
        [
            "export",
            str(tiny_run / "best.pt"),
            "--out",
            str(out),
            "--qat",
            "--data",
            "synthetic:8",
            "--epochs",
            "1",
            "--calib-count",
            "4",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    before, after = read_checkpoint(tiny_run / "best.pt"), read_checkpoint(out / "qat.pt")
    assert list(after["state_dict"]) == list(before["state_dict"])  # an ordinary checkpoint again
    changed = [
        k
        for k, v in after["state_dict"].items()
        if v.is_floating_point() and not torch.equal(v, before["state_dict"][k])
    ]
    assert any(k.endswith("weight") for k in changed), "QAT did not train the weights"
    assert all(not k.endswith(("running_mean", "running_var")) for k in changed), (
        "BN statistics must stay frozen"
    )
    assert after["spec"]["source"]["qat"]["epochs"] == 1
    g = onnx.load(str(out / "model.int8-qat-trt.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    zps = [inits[n.input[2]] for n in g.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]
    assert zps and all(z.dtype == np.int8 and not z.any() for z in zps)
    assert (out / "model.onnx").is_file()  # the FP32 export of the original checkpoint stays
    assert asked == ["cpu"]  # --device reached the fine-tuning, not the default "auto"
    # --calib-count: 4 calibration frames, not the default 128 (synthetic:8 has more than 4)
    int8 = read_onnx_spec(out / "model.int8-qat-trt.onnx").source["int8"]
    assert int8["calib"] == "synthetic:8" and int8["calib_count"] == 4


def test_qat_without_data_is_one_clear_message(tiny_run, tmp_path, capsys):
    assert main(["export", str(tiny_run / "best.pt"), "--out", str(tmp_path), "--qat"]) != 0
    assert "qat needs data" in capsys.readouterr().err
