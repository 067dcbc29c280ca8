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
    with pytest.raises(EdgesegError, match="class names"):
        _spec(classes=["a"])
