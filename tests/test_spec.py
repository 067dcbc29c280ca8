import pytest

from edgeseg.errors import EdgesegError
from edgeseg.spec import FORMAT_VERSION, InputSpec, ModelSpec


def _spec(**kw):
    d = dict(
        arch="mbv3_unet_small",
        num_classes=2,
        classes=["a", "b"],
        palette=[[0, 0, 0], [255, 0, 0]],
        ignore_index=255,
        input=InputSpec(64, 128, [0.0] * 3, [1.0] * 3),
    )
    d.update(kw)
    return ModelSpec(**d)


def test_json_round_trip():
    s = _spec(source={"dataset": "synthetic", "val_miou": 0.5})
    assert ModelSpec.from_json(s.to_json()) == s
    assert s.input_hw == (64, 128)


def test_newer_format_is_refused():
    d = _spec().to_dict()
    d["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(EdgesegError, match="upgrade edgeseg"):
        ModelSpec.from_dict(d, "x.onnx")


@pytest.mark.parametrize("broken", ["{", "[]", '{"format_version": 1}'])
def test_malformed_spec(broken):
    with pytest.raises(EdgesegError, match="x.onnx"):
        ModelSpec.from_json(broken, "x.onnx")


def test_inconsistent_classes():
    with pytest.raises(EdgesegError, match="field classes must be a list of 2 names"):
        _spec(classes=["a"])


def _input(**kw):
    d = {"height": 64, "width": 128, "mean": [0.0] * 3, "std": [1.0] * 3, **kw}
    return d


MALFORMED = [
    ({"num_classes": 0, "classes": []}, "num_classes must be an integer from 1 to 256"),
    ({"num_classes": True, "classes": ["a"]}, "num_classes"),
    ({"num_classes": 300, "classes": [str(i) for i in range(300)]}, "num_classes"),
    ({"classes": ["a", 7]}, "classes must be non-empty strings"),
    ({"palette": [[0, 0], [1, 2, 3]]}, "palette must be at least 2 \\[r, g, b\\]"),
    ({"palette": [[300, 0, 0], [1, 2, 3]]}, "palette"),
    ({"palette": [[0, 0, 0]]}, "palette"),
    ({"palette": [[True, 0, 0], [1, 2, 3]]}, "palette"),
    ({"ignore_index": -1}, "ignore_index"),
    (
        {"input": _input(height=100000, width=100000)},
        "input.height must be an integer from 1 to 16384",
    ),
    ({"input": _input(height=16384, width=16384)}, "input must be at most"),
    ({"input": _input(height="64")}, "input.height"),
    ({"input": _input(std=[1.0, 0.0, 1.0])}, "input.std must be three finite numbers above 0"),
    ({"input": _input(std=[1.0, float("nan"), 1.0])}, "input.std"),
    ({"input": _input(mean=[0.0, 0.0])}, "input.mean"),
    ({"input": _input(dtype="uint8")}, "input must be layout NCHW, color RGB, dtype float32"),
    ({"output": {"kind": "probabilities"}}, "output.kind"),
    ({"output": {"stride": 0}}, "output.stride"),
    ({"precision": "int4"}, "precision"),
]


@pytest.mark.parametrize("change,msg", MALFORMED)
def test_malformed_specs_are_refused_naming_the_field(change, msg):
    d = _spec().to_dict()
    d.update(change)
    with pytest.raises(EdgesegError, match=f"x.onnx: model spec field {msg}"):
        ModelSpec.from_dict(d, "x.onnx")
