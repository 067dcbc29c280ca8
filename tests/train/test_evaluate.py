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


def _scores_by_hand(infer, data: str, n: int, spec, flip: bool, scales) -> dict[str, float]:
    """mIoU and pixel accuracy of test-time augmentation done here: the class probabilities at
    label size of each scale (sides rounded to multiples of 32), and with ``flip`` of the
    mirrored frame mirrored back, summed; then the argmax, counted in a confusion matrix."""
    import torch
    import torch.nn.functional as F

    from edgeseg.data import build_dataset
    from edgeseg.runtime import kernels

    dataset = build_dataset(data, "val")
    c = spec.num_classes
    counts = np.zeros((c, c), np.int64)
    for i in range(n):
        img_rgb, mask = dataset[i]
        frame = np.ascontiguousarray(img_rgb[..., ::-1])
        total = torch.zeros(c, *mask.shape, dtype=torch.float64)
        for s in scales:
            hw = [max(32, round(side * s / 32) * 32) for side in spec.input_hw]
            x = kernels.preprocess(frame, hw, spec.input.mean, spec.input.std)
            views = [(x, False)] + ([(np.ascontiguousarray(x[..., ::-1]), True)] if flip else [])
            for xi, mirrored in views:
                logits = torch.from_numpy(np.asarray(infer(xi), np.float32))
                logits = logits.flip(-1) if mirrored else logits
                up = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
                total += up.softmax(1)[0].double()
        pred = total.argmax(0).numpy()
        keep = mask < c
        idx = mask[keep].astype(np.int64) * c + pred[keep]
        counts += np.bincount(idx, minlength=c * c).reshape(c, c)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    miou = float(np.mean(tp[union > 0] / union[union > 0]))
    return {"miou": miou, "pixel_acc": float(tp.sum() / counts.sum())}


@pytest.mark.parametrize("model", ["onnx", "pt"])
def test_tta_runs_end_to_end(model, tiny_onnx, tiny_run):
    from edgeseg.runtime.backends import load_backend

    path = tiny_onnx if model == "onnx" else tiny_run / "best.pt"
    flip, scales = (True, (1.0,)) if model == "onnx" else (True, (0.75, 1.0))
    tta = "flip" if model == "onnx" else "flip,0.75,1.0"
    data, n = "synthetic:8", 2
    runner = load_backend(path, device="cpu")
    with_tta = _scores_by_hand(runner.infer, data, n, runner.spec, flip, scales)
    without = _scores_by_hand(runner.infer, data, n, runner.spec, False, (1.0,))
    assert with_tta["pixel_acc"] != without["pixel_acc"]  # TTA changes predictions here
    res = evaluate(path, data, device="cpu", tta=tta, limit=n)
    plain = evaluate(path, data, device="cpu", limit=n)
    assert res["tta"] == tta and plain["tta"] is None and res["images"] == plain["images"] == n
    for key in ("miou", "pixel_acc"):
        assert res[key] == pytest.approx(with_tta[key], abs=1e-9), key
        assert plain[key] == pytest.approx(without[key], abs=1e-9), key
