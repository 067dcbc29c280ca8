"""The DLA pre-flight (edgeseg.export.dla): each documented limit on a hand-built graph that
breaks it (reason and fix checked), every registered architecture checked, the DLA-clean ones
shown clean, ``edgeseg check`` and the ``export --dla`` refusals."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseg.errors import EdgesegError
from edgeseg.export.dla import check_architecture, check_proto, refusal
from edgeseg.models import list_models

F16 = TensorProto.FLOAT16
CLEAN = {"mbv3_unet_small_minimal", "mbv3_unet_large_minimal"}


def _graph(nodes, inits=(), shape=(1, 16, 32, 32), out_shape=None, dtype=F16) -> onnx.ModelProto:
    """A graph from ``x`` (FP16, ``shape``) to ``y`` through ``nodes``."""
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", dtype, list(shape))],
        [helper.make_tensor_value_info("y", dtype, out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _w(*shape) -> np.ndarray:
    return np.zeros(shape, np.float16)


def _conv(**attrs):
    k = attrs.pop("k", 3)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="n", **attrs)
    return [node], [("w", _w(16, 16, k, k))]


# one failing node per rule: (nodes, initializers, input shape, rule, words in the reason, fix)
CASES = {
    "conv-kernel": (*_conv(k=33), (1, 16, 64, 64), "conv-kernel", "[33, 33]", "two 3x3"),
    "conv-stride": (*_conv(strides=[9, 9]), None, "conv-stride", "[1, 8]", "stride at most 8"),
    "conv-padding": (*_conv(pads=[3, 3, 3, 3]), None, "conv-padding", "not below", "less than"),
    "deconv-padding": (
        [helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="n", strides=[2, 2],
                          pads=[1, 1, 1, 1])],
        [("w", _w(16, 16, 4, 4))], None, "deconv-padding", "padding", "Resize",
    ),
    "pool-window": (
        [helper.make_node("AveragePool", ["x"], ["y"], name="n", kernel_shape=[9, 9])],
        [], None, "pool-window", "[9, 9]", "at most 8",
    ),
    "reduce": (
        [helper.make_node("GlobalAveragePool", ["x"], ["y"], name="n")],
        [], None, "reduce-average", "average reduce", "max only",
    ),
    "hard": (
        [helper.make_node("HardSwish", ["x"], ["y"], name="n")],
        [], None, "hard-activation", "hard swish", "Clip(x + 3, 0, 6)",
    ),
    "clip": (
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="n")],
        [("lo", np.float16(-1)), ("hi", np.float16(6))], None, "clip", "not a clipped ReLU",
        "ReLU6",
    ),
    "broadcast": (
        [helper.make_node("Mul", ["x", "m"], ["y"], name="n")],
        [("m", _w(1, 1, 32, 32))], None, "broadcast", "[1, 1, 32, 32]", "per channel",
    ),
    "concat-axis": (
        [helper.make_node("Concat", ["x", "x"], ["y"], name="n", axis=2)],
        [], None, "concat-axis", "axis 2", "channels",
    ),
    "resize-scale": (
        [helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="linear",
                          coordinate_transformation_mode="half_pixel")],
        [("s", np.array([1, 1, 8, 8], np.float32))], None, "resize-scale", "[8.0, 8.0]", "x2 twice",
    ),
    "resize-coords": (
        [helper.make_node("Resize", ["x", "", "s"], ["y"], name="n", mode="linear",
                          coordinate_transformation_mode="align_corners")],
        [("s", np.array([1, 1, 2, 2], np.float32))], None, "resize-coords", "align_corners",
        "align_corners=False",
    ),
    "rank": (
        [helper.make_node("Relu", ["x"], ["y"], name="n")],
        [], (16, 32), "rank", "2-D", "4-D",
    ),
    "unsupported": (
        [helper.make_node("Exp", ["x"], ["y"], name="n")],
        [], None, "no-dla-layer", "ONNX Exp", "DLA layers",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rule_names_the_node_its_reason_and_fix(case):
    nodes, inits, shape, rule, reason, fix = CASES[case]
    report = check_proto(_graph(nodes, inits, shape or (1, 16, 32, 32)), case)
    found = [f for f in report.findings if f.rule == rule]
    assert found, report.findings
    assert found[0].node == "n" and reason in found[0].reason and fix in found[0].fix
    assert not report.clean and report.fallback_nodes == ["n"]


def test_within_the_limits_the_same_layers_are_clean():
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c", "lo", "hi"], ["r"]),
        helper.make_node("Resize", ["r", "", "s"], ["u"], mode="linear",
                         coordinate_transformation_mode="pytorch_half_pixel"),
        helper.make_node("Concat", ["u", "x"], ["cat"], axis=1),
        helper.make_node("MaxPool", ["cat"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    inits = [("w", _w(16, 16, 3, 3)), ("lo", np.float16(0)), ("hi", np.float16(6)),
             ("s", np.array([1, 1, 2, 2], np.float32))]  # fmt: skip
    report = check_proto(_graph(nodes, inits), "ok")
    assert report.clean and report.layers == 5 and report.precision == "fp16"


def test_an_fp32_graph_is_refused_whole_and_fp32_ops_in_an_fp16_graph_fall_back():
    relu = [helper.make_node("Relu", ["x"], ["y"], name="n")]
    fp32 = check_proto(_graph(relu, dtype=TensorProto.FLOAT), "m")
    assert "FP32" in fp32.precision_error and "--fp16" in fp32.precision_error and not fp32.clean
    mixed = [
        helper.make_node("Cast", ["x"], ["x32"], name="in", to=TensorProto.FLOAT),
        helper.make_node("Relu", ["x32"], ["r"], name="relu32"),
        helper.make_node("Cast", ["r"], ["h"], name="back", to=F16),
        helper.make_node("Relu", ["h"], ["y"], name="relu16"),
    ]
    report = check_proto(_graph(mixed), "m")
    assert report.boundary == ["in"]  # a cast of the graph input: the DLA's edge, not a layer
    assert {(f.node, f.rule) for f in report.findings} == {("relu32", "fp32"), ("back", "cast")}


@pytest.mark.parametrize("name", list_models())
def test_every_architecture_gets_a_report(name):
    report = check_architecture(name, 11, (128, 160))
    assert report.precision == "fp16" and report.layers > 20
    assert report.clean == (name in CLEAN), [(f.node, f.reason) for f in report.findings[:5]]
    assert report.to_dict()["fallback_nodes"] == len(report.fallback_nodes)


def test_the_refusal_lists_layers_reasons_and_fixes():
    report = check_proto(_graph(*CASES["hard"][:2]), "m.onnx")
    text = refusal(report)
    assert text.startswith("1 of 1 layers of m.onnx would fall back") and "--gpu-fallback" in text
    assert "n (HardSwish): hard swish" in text and "fix: write it with ReLU6" in text


def test_check_cli_one_line_errors(tmp_path, capsys):
    from edgeseg.cli import main

    assert main(["check", str(tmp_path / "missing.onnx"), "--dla"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"not found: {tmp_path / 'missing.onnx'}")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert main(["check", str(tmp_path / "bad.onnx"), "--dla"]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["check", str(tmp_path / "bad.onnx")]) == 2
    assert "--dla" in capsys.readouterr().err


def test_check_cli_prints_the_fallbacks_and_writes_json(tmp_path, capsys):
    from edgeseg.cli import main

    path = tmp_path / "m.onnx"
    onnx.save(_graph(*CASES["reduce"][:2]), str(path))
    out = tmp_path / "r.json"
    assert main(["check", str(path), "--dla", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 of 1 layers fall back" in text and "average reduce" in text and "max only" in text
    rec = json.loads(out.read_text())["dla"][0]
    assert rec["fallback_nodes"] == 1 and rec["reasons"] == {"reduce-average": 1}
    assert rec["docs"]["url"].endswith("dla-layer-restrictions.html")


def test_check_cli_shows_an_architecture_clean(capsys):
    from edgeseg.cli import main

    argv = ["check", "mbv3_unet_small_minimal", "--dla", "--num-classes", "5", "--input-size",
            "128x160", "--model-kwargs", '{"dropout": 0.0}']  # fmt: skip
    assert main(argv) == 0
    assert "mbv3_unet_small_minimal: DLA-clean: all" in capsys.readouterr().out


def test_export_dla_refusals_are_one_line_each(tmp_path, tiny_onnx):
    from edgeseg.export.config import ExportConfig

    def cfg(**kw):
        return ExportConfig(checkpoint=str(tiny_onnx), out=str(tmp_path), **kw)

    for kw, words in [
        ({"gpu_fallback": True, "int8": True}, "gpu_fallback is for a DLA build"),
        ({"dla": 0, "int8": True}, "dla needs trt"),
        ({"dla": 0, "trt": True, "dynamic": "1,2,4"}, "static shapes"),
    ]:
        with pytest.raises(EdgesegError, match=words):
            cfg(**kw).engine_options()
    ckpt = ExportConfig(checkpoint="x.pt", out=str(tmp_path), trt=True, dla=0)
    with pytest.raises(EdgesegError, match="FP16 or INT8 only.*--fp16 or --int8"):
        ckpt.engine_options()
    opts = cfg(dla=1, trt=True, gpu_fallback=True).engine_options()
    assert (opts.dla_core, opts.gpu_fallback) == (1, True)


def test_the_preflight_refuses_an_fp32_onnx_and_fallbacks_without_gpu_fallback(tmp_path):
    from edgeseg.export.chain import dla_preflight

    fp32 = tmp_path / "fp32.onnx"
    onnx.save(_graph([helper.make_node("Relu", ["x"], ["y"])], dtype=TensorProto.FLOAT), fp32)
    with pytest.raises(EdgesegError, match="computes in FP32"):
        dla_preflight(str(fp32), gpu_fallback=True)
    hard = tmp_path / "hard.onnx"
    onnx.save(_graph(*CASES["hard"][:2]), hard)
    with pytest.raises(EdgesegError, match="would fall back"):
        dla_preflight(str(hard), gpu_fallback=False)
    dla_preflight(str(hard), gpu_fallback=True)  # allowed: those layers go to the GPU


def test_dla_builder_settings_reach_tensorrt(monkeypatch):
    """The DLA device, core and GPU-fallback flag are set on the builder config (nothing of the
    DLA when no core is asked for). A stand-in for TensorRT's config: the real names are
    type-checked against TensorRT's stubs (tests/export/test_tensorrt_types.py)."""
    import enum
    from types import SimpleNamespace

    from edgeseg.export import engine

    class DeviceType(enum.Enum):
        GPU = 0
        DLA = 1

    class Config:
        def __init__(self) -> None:
            self.default_device_type, self.DLA_core, self.flags = DeviceType.GPU, -1, set()

        def set_flag(self, flag) -> None:
            self.flags.add(flag)

    trt = SimpleNamespace(DeviceType=DeviceType, BuilderFlag=SimpleNamespace(GPU_FALLBACK=3))
    monkeypatch.setattr(engine, "trt", trt)
    config = Config()
    engine._use_dla(config, engine.EngineOptions())
    assert config.default_device_type == DeviceType.GPU and not config.flags
    engine._use_dla(config, engine.EngineOptions(dla_core=1, gpu_fallback=True))
    assert config.default_device_type == DeviceType.DLA and config.DLA_core == 1
    assert config.flags == {3}
    strict = Config()
    engine._use_dla(strict, engine.EngineOptions(dla_core=0))
    assert (strict.default_device_type, strict.DLA_core, strict.flags) == (DeviceType.DLA, 0, set())
