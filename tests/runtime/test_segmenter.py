import numpy as np
import pytest

from edgeseg import Segmenter
from edgeseg.errors import EdgesegError
from edgeseg.runtime.backends import load_backend


@pytest.fixture(scope="module")
def frame():
    from edgeseg.data.synthetic import render_scene

    rgb, _ = render_scene(3, (120, 200))
    return np.ascontiguousarray(rgb[..., ::-1])


def test_onnx_and_checkpoint_give_the_same_labels(tiny_run, tiny_onnx, frame):
    a = Segmenter(tiny_onnx)(frame)
    b = Segmenter(tiny_run / "best.pt", device="cpu")(frame)
    assert a.labels.shape == frame.shape[:2] and a.labels.dtype == np.uint8
    assert (a.labels == b.labels).mean() > 0.999
    assert set(a.timings_ms) == {"pre", "infer", "post"}


def test_nearest_mode_resizes_logits_in_the_kernel(tiny_run, tiny_onnx, frame, tmp_path):
    fused = Segmenter(tiny_onnx)
    whole = Segmenter(tiny_onnx, fuse_resize=False)
    assert fused.upsample == 2 and whole.upsample == 1
    x = np.zeros((1, 3, *fused.spec.input_hw), np.float32)
    assert fused.backend.infer(x).shape[-2:] == (32, 64)  # tiny model: 64x128 input
    for alpha in (None, 0.5):
        a, b = fused(frame, alpha), whole(frame, alpha)
        assert (a.labels == b.labels).mean() > 0.999
    # the accuracy path keeps the graph whole
    assert Segmenter(tiny_onnx, mode="bilinear").upsample == 1
    from edgeseg.export.onnx import export_onnx

    # a graph that ends in ArgMax + Cast: nothing to lift
    export_onnx(tiny_run / "best.pt", tmp_path, argmax=True)
    labels_model = Segmenter(tmp_path / "model.argmax.onnx")
    assert labels_model.upsample == 1
    assert (labels_model(frame).labels == b.labels).mean() > 0.999


def test_result_overlay_and_colorize(tiny_onnx, frame):
    seg = Segmenter(tiny_onnx)
    res = seg(frame)
    labels = res.labels
    assert len(np.unique(labels)) >= 3  # several classes, so several palette colours are drawn
    # By hand: the palette is RGB, frames are BGR; blend, then round half up.
    colours_bgr = np.array(seg.spec.palette, np.float64)[:, ::-1]
    alpha = 0.4
    by_hand = np.floor(frame * (1 - alpha) + colours_bgr[labels] * alpha + 0.5).astype(np.uint8)
    blended_after = res.overlay(alpha=alpha)  # blended from the result's frame and labels
    blended_during = seg(frame, alpha)  # blended in the post-processing pass
    np.testing.assert_array_equal(blended_during.labels, labels)
    for vis in (blended_after, blended_during.vis, blended_during.overlay(alpha)):
        assert vis.shape == frame.shape and vis.dtype == np.uint8
        # at most 1 apart: a rounding tie may fall either way in float32
        off = int(np.abs(vis.astype(int) - by_hand).max())
        assert off <= 1, f"the overlay is up to {off} away from the blend by hand"
    np.testing.assert_array_equal(res.colorize(), colours_bgr.astype(np.uint8)[labels])


def test_backend_auto_picks_by_suffix(tiny_run, tiny_onnx):
    assert load_backend(tiny_onnx).name == "ort"
    assert load_backend(tiny_run / "best.pt", device="cpu").name == "torch"
    with pytest.raises(EdgesegError, match="cannot run a .onnx"):
        load_backend(tiny_onnx, backend="torch")


@pytest.mark.parametrize(
    "name,content,msg",
    [
        ("missing.onnx", None, "model not found"),
        ("corrupt.onnx", b"\x00garbage", "could not be loaded by ONNX Runtime"),
        ("model.tflite", b"x", "unsupported model type"),
    ],
)
def test_bad_model_files(tmp_path, name, content, msg):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(EdgesegError, match=msg):
        Segmenter(path)


def test_onnx_without_spec_is_refused(tmp_path):
    import torch

    plain = tmp_path / "plain.onnx"
    torch.onnx.export(
        torch.nn.Conv2d(3, 2, 1), (torch.zeros(1, 3, 32, 32),), str(plain), dynamo=False
    )
    with pytest.raises(EdgesegError, match="no edgeseg model spec"):
        Segmenter(plain)


@pytest.mark.parametrize("suffix", [".onnx", ".engine"])
def test_compile_of_an_exported_model_is_one_clear_error(tiny_onnx, tmp_path, suffix):
    """torch.compile runs a .pt; an exported file asked for it is refused, not run without it."""
    model = tiny_onnx if suffix == ".onnx" else tmp_path / "model.engine"
    if suffix == ".engine":
        model.write_bytes(b"refused before TensorRT reads it")
    with pytest.raises(EdgesegError, match=r"--compile \(torch.compile\) needs a \.pt checkpoint"):
        Segmenter(model, compile=True)
    assert Segmenter(tiny_onnx, compile=False).backend.name == "ort"


def test_unknown_backend(tiny_onnx):
    with pytest.raises(EdgesegError, match="unknown backend 'onnx'"):
        Segmenter(tiny_onnx, backend="onnx")


def test_confidence_is_computed_only_when_asked(tiny_onnx, frame):
    from edgeseg.runtime import kernels

    plain = Segmenter(tiny_onnx)(frame)
    assert plain.confidence is None
    seg = Segmenter(tiny_onnx, confidence=True)
    res = seg(frame, 0.5)
    scores = seg.infer(seg.prepare([frame]))
    want = np.empty(frame.shape[:2], np.uint8)
    labels = kernels.postprocess(scores, frame.shape[:2], upsample=seg.upsample, conf_out=want)
    np.testing.assert_array_equal(res.confidence, want)
    np.testing.assert_array_equal(res.labels, labels)
    np.testing.assert_array_equal(res.labels, plain.labels)  # asking changes no label
    assert res.confidence.dtype == np.uint8 and res.confidence.shape == frame.shape[:2]


def test_min_confidence_gives_unsure_pixels_the_ignore_label(tiny_onnx, frame):
    sure = Segmenter(tiny_onnx, confidence=True)(frame)
    floor = float(np.median(sure.confidence)) / 255  # about half the pixels fall below it
    res = Segmenter(tiny_onnx, min_confidence=floor)(frame)
    unsure = sure.confidence < floor * 255
    assert 0 < unsure.mean() < 1
    assert (res.labels[unsure] == res.spec.ignore_index).all()
    np.testing.assert_array_equal(res.labels[~unsure], sure.labels[~unsure])
    np.testing.assert_array_equal(res.confidence, sure.confidence)
    # the overlay agrees with the labels: the frame itself where there is no class
    drawn = Segmenter(tiny_onnx, min_confidence=floor)(frame, overlay_alpha=0.5)
    plain = Segmenter(tiny_onnx)(frame, overlay_alpha=0.5)
    np.testing.assert_array_equal(drawn.vis[unsure], frame[unsure])
    np.testing.assert_array_equal(drawn.vis[~unsure], plain.vis[~unsure])
    redrawn = drawn.overlay(0.7)  # another alpha: drawn again from the labels, alike
    np.testing.assert_array_equal(redrawn[unsure], frame[unsure])
    np.testing.assert_array_equal(redrawn[~unsure], plain.overlay(0.7)[~unsure])


@pytest.mark.parametrize("kw, match", [
    ({"min_confidence": 1.5}, r"min_confidence is a probability in \[0, 1\], got 1.5"),
    ({"confidence": True, "fuse_resize": False}, None),
])  # fmt: skip
def test_confidence_settings_are_checked(tiny_onnx, kw, match):
    if match is None:  # a model whose resize stays in the graph: confidence at the model's output
        assert Segmenter(tiny_onnx, **kw).confidence
        return
    with pytest.raises(EdgesegError, match=match):
        Segmenter(tiny_onnx, **kw)


def test_confidence_of_an_argmax_model_is_one_clear_error(tiny_run, tmp_path):
    from edgeseg.export.onnx import export_onnx

    argmax = export_onnx(tiny_run / "best.pt", tmp_path, argmax=True)["path"]
    with pytest.raises(EdgesegError, match="needs a model that outputs class scores"):
        Segmenter(argmax, min_confidence=0.5)
