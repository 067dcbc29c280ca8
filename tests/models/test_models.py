"""Contract tests run over every registered architecture."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edgeseg.errors import EdgesegError
from edgeseg.models import create_model, list_models
from edgeseg.models.complexity import count_gflops, count_params

NUM_CLASSES = 5
H, W = 64, 96


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, NUM_CLASSES)


def _as_list(out: torch.Tensor | tuple) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    logits, aux = out
    return [logits, *aux]


@pytest.mark.parametrize("name", list_models())
class TestModel:
    def test_eval_forward_shape(self, name: str) -> None:
        model = _build(name).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, H, W))
        assert isinstance(out, torch.Tensor)
        assert out.shape == (1, NUM_CLASSES, H, W)
        assert model.output_stride == 1

    def test_train_forward_backward(self, name: str) -> None:
        model = _build(name).train()
        x = torch.randn(2, 3, H, W)  # batch 2: BN after global pooling needs > 1 value
        target = torch.randint(0, NUM_CLASSES, (2, H, W))
        out = model(x)
        if name == "bisenetv2":
            assert isinstance(out, tuple) and len(out) == 2
            assert isinstance(out[1], list) and len(out[1]) == 4
        else:
            assert isinstance(out, torch.Tensor)
        outputs = _as_list(out)
        for o in outputs:
            assert o.shape == (2, NUM_CLASSES, H, W)
        loss = sum(F.cross_entropy(o, target) for o in outputs)
        loss.backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None, f"{pname} got no gradient"
            assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"

    def test_onnx_matches_pytorch(self, name: str, tmp_path) -> None:
        ort = pytest.importorskip("onnxruntime")
        model, path = _export(name, tmp_path)
        x = torch.randn(1, 3, H, W)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = sess.run(["logits"], {"input": x.numpy()})
        with torch.no_grad():
            want = model(x).numpy()
        assert got.shape == want.shape == (1, NUM_CLASSES, H, W)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)

    def test_trailing_resize_moves_into_postprocessing(self, name: str, tmp_path) -> None:
        """The runtime lifts the final logits resize out of the graph (OnnxRuntimeBackend
        fuse_resize) and the post-processing kernel does it: the labels stay the model's."""
        import onnx

        ort = pytest.importorskip("onnxruntime")
        from edgeseg.runtime import kernels
        from edgeseg.runtime.backends.onnxruntime import lift_trailing_resize

        model, path = _export(name, tmp_path)
        proto = onnx.load(str(path))
        k = lift_trailing_resize(proto)
        assert k == model.logits_stride
        onnx.checker.check_model(proto)  # a valid model, no dangling constants
        x = np.random.default_rng(0).standard_normal((1, 3, H, W)).astype(np.float32)
        full = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": x}
        )[0]
        cut = ort.InferenceSession(
            proto.SerializeToString(), providers=["CPUExecutionProvider"]
        ).run(None, {"input": x})[0]
        assert cut.shape == (1, NUM_CLASSES, H // k, W // k)
        want = kernels.postprocess(full, (120, 200))
        got = kernels.postprocess(cut, (120, 200), upsample=k)
        assert (got == want).mean() > 0.999  # float rounding in the resize may flip a near-tie

    def test_is_a_segmentation_model_with_its_name_and_strides(self, name: str) -> None:
        from edgeseg.models.base import SegmentationModel

        model = _build(name).eval()
        assert isinstance(model, SegmentationModel) and model.arch == name
        assert model.num_classes == NUM_CLASSES and model.input_multiple == 32
        assert model.logits_stride >= model.output_stride == 1
        with pytest.raises(EdgesegError, match=r"\(N, 3, H, W\)"):
            model(torch.zeros(1, 1, 64, 96))  # a grey image: one clear error

    def test_rejects_non_multiple_of_32(self, name: str) -> None:
        model = _build(name).eval()
        with pytest.raises(EdgesegError, match="multiples of 32"):
            model(torch.zeros(1, 3, 64, 90))

    def test_complexity_positive(self, name: str) -> None:
        model = _build(name).train()
        assert count_params(model) > 0
        assert count_gflops(model, (H, W)) > 0
        assert model.training, "count_gflops must restore train mode"


def _export(name: str, tmp_path) -> tuple[torch.nn.Module, object]:
    """The model with a few batches' worth of BN statistics (realistic eval activations), and its
    ONNX file."""
    model = _build(name)
    with torch.no_grad():
        model.train()
        model(torch.randn(2, 3, H, W))
    model.eval()
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            torch.randn(1, 3, H, W),
            str(path),
            opset_version=17,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
        )
    return model, path


def test_large_is_bigger_than_small() -> None:
    small, large = _build("mbv3_unet_small"), _build("mbv3_unet_large")
    assert count_params(large) > count_params(small)
    assert count_gflops(large, (H, W)) > count_gflops(small, (H, W))


def test_unknown_model_suggests_close_name() -> None:
    with pytest.raises(EdgesegError, match="did you mean 'mbv3_unet_small'"):
        create_model("mbv3_unet_smal", 3)
