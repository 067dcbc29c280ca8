"""``edgeseg eval``: test-time augmentation and its limits."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.errors import EdgesegError
from edgeseg.spec import InputSpec, ModelSpec
from edgeseg.train.evaluate import evaluate, parse_tta, tta_probs

SPEC = ModelSpec(
    arch="test",
    num_classes=3,
    classes=["a", "b", "c"],
    palette=[[0, 0, 0]] * 3,
    ignore_index=255,
    input=InputSpec(64, 96, [120.0] * 3, [60.0] * 3),
)


def _pointwise(x: np.ndarray) -> np.ndarray:
    """A per-pixel model (1x1 convolution): mirroring the input mirrors its output."""
    w = np.array([[1.0, -0.5, 0.2], [0.3, 0.8, -1.0], [-0.7, 0.1, 0.9]], np.float32)
    return np.einsum("ck,nkhw->nchw", w, x)


def test_parse_tta():
    assert parse_tta(None) == (False, (1.0,))
    assert parse_tta("flip") == (True, (1.0,))
    assert parse_tta("flip,0.75,1,1.25") == (True, (0.75, 1.0, 1.25))
    with pytest.raises(EdgesegError, match="flip and scales"):
        parse_tta("flop")
    with pytest.raises(EdgesegError, match="between 0.25 and 4"):
        parse_tta("9")


def test_flip_tta_of_a_mirror_symmetric_model_equals_no_tta():
    frame = np.random.default_rng(0).integers(0, 256, (45, 70, 3), dtype=np.uint8)
    hw = (45, 70)
    plain = tta_probs(_pointwise, frame, SPEC, False, (1.0,), hw)
    flipped = tta_probs(_pointwise, frame, SPEC, True, (1.0,), hw) / 2
    np.testing.assert_allclose(flipped, plain, rtol=0, atol=1e-5)

    def lopsided(x: np.ndarray) -> np.ndarray:  # depends on the column: not mirror-symmetric
        out = _pointwise(x)
        out[:, 0] += np.linspace(-3, 3, x.shape[-1], dtype=np.float32)
        return out

    a = tta_probs(lopsided, frame, SPEC, False, (1.0,), hw)
    b = tta_probs(lopsided, frame, SPEC, True, (1.0,), hw) / 2
    assert np.abs(a - b).max() > 0.05  # the mirrored pass really ran


def test_scales_need_a_model_of_any_input_size(tiny_onnx):
    with pytest.raises(EdgesegError, match="need a model that takes any input size"):
        evaluate(tiny_onnx, "synthetic:4", tta="flip,0.75,1.0", limit=1)


@pytest.mark.parametrize("model", ["onnx", "pt"])
def test_tta_runs_end_to_end(model, tiny_onnx, tiny_run):
    path = tiny_onnx if model == "onnx" else tiny_run / "best.pt"
    tta = "flip" if model == "onnx" else "flip,0.75,1.0"
    res = evaluate(path, "synthetic:4", tta=tta, limit=2)
    plain = evaluate(path, "synthetic:4", limit=2)
    assert res["tta"] == tta and 0 <= res["miou"] <= 1
    assert abs(res["miou"] - plain["miou"]) < 0.3
