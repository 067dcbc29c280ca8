"""Pre/post-processing kernels against the usual OpenCV/NumPy code, same machine, same run.

    python -m pytest benchmarks/test_kernels.py            (add --benchmark-json=OUT for raw data)

Sizes: a 1280x720 frame with 19-class logits at 256x512 (512x256 input), and 1920x1080 with
logits at 512x1024. Baselines:
- preprocess: ``cv2.dnn.blobFromImage`` (resize, BGR->RGB, mean subtraction and one scale factor);
- postprocess: NumPy argmax -> cv2.resize nearest -> palette lookup -> cv2.addWeighted.
With a GPU and cuda-python, the CUDA kernels are measured too (device-resident tensors,
synchronised).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgeseg.runtime import kernels

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZES = {"720p": ((720, 1280), (256, 512)), "1080p": ((1080, 1920), (512, 1024))}
C = 19


def _data(size: str):
    frame_hw, model_hw = SIZES[size]
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (*frame_hw, 3), dtype=np.uint8)
    # smooth logits, like a network's: labels form regions rather than salt and pepper
    small = rng.standard_normal((C, model_hw[0] // 16, model_hw[1] // 16)).astype(np.float32)
    logits = np.stack(
        [cv2.resize(c, model_hw[::-1], interpolation=cv2.INTER_LINEAR) for c in small]
    )[None]
    palette = rng.integers(0, 256, (C, 3))
    return frame, np.ascontiguousarray(logits), palette, frame_hw, model_hw


def naive_postprocess(logits, frame, lut, alpha=0.5):
    labels = logits[0].argmax(0).astype(np.uint8)
    labels = cv2.resize(labels, frame.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    return labels, cv2.addWeighted(frame, 1 - alpha, lut[labels], alpha, 0)


@pytest.mark.parametrize("size", SIZES)
def test_preprocess_blobfromimage(benchmark, size):
    frame, _, _, _, model_hw = _data(size)
    benchmark.group = f"preprocess {size}"
    benchmark.extra_info["role"] = "baseline"
    blob = benchmark(cv2.dnn.blobFromImage, frame, 1 / 57.6, model_hw[::-1], MEAN, swapRB=True)
    assert blob.shape == (1, 3, *model_hw)


@pytest.mark.parametrize("size", SIZES)
def test_preprocess_edgeseg_cpu(benchmark, size):
    if kernels._cpu is None:
        pytest.skip("C++ extension not built")
    kernels.use("cpu")
    frame, _, _, _, model_hw = _data(size)
    out = np.empty((1, 3, *model_hw), np.float32)
    benchmark.group = f"preprocess {size}"
    benchmark(kernels.preprocess, frame, model_hw, MEAN, STD, out=out)
    np.testing.assert_allclose(
        out, kernels.reference.preprocess(frame, model_hw, MEAN, STD), atol=1e-5
    )


@pytest.mark.parametrize("size", SIZES)
def test_postprocess_numpy_opencv(benchmark, size):
    frame, logits, palette, _, _ = _data(size)
    lut = kernels.palette_lut_bgr(palette)
    benchmark.group = f"postprocess+overlay {size}"
    benchmark.extra_info["role"] = "baseline"
    labels, vis = benchmark(naive_postprocess, logits, frame, lut)
    assert vis.shape == frame.shape


@pytest.mark.parametrize("size", SIZES)
def test_postprocess_edgeseg_cpu(benchmark, size):
    if kernels._cpu is None:
        pytest.skip("C++ extension not built")
    kernels.use("cpu")
    frame, logits, palette, frame_hw, _ = _data(size)
    labels = np.empty(frame_hw, np.uint8)
    vis = np.empty_like(frame)
    benchmark.group = f"postprocess+overlay {size}"
    benchmark(
        kernels.postprocess, logits, frame_hw, palette, frame, 0.5, out=labels, overlay_out=vis
    )
    # (cv2's INTER_NEAREST samples pixel corners, not centres, so it is not the reference here)
    want_labels, want_vis = kernels.reference.postprocess(logits, frame_hw, palette, frame, 0.5)
    np.testing.assert_array_equal(labels, want_labels)
    assert np.abs(vis.astype(np.int16) - want_vis).max() <= 1


@pytest.mark.parametrize("size", SIZES)
def test_pre_post_edgeseg_cuda(benchmark, size):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("cuda.bindings.driver")
    from edgeseg.runtime.kernels import cuda as kcuda

    frame, logits, palette, frame_hw, model_hw = _data(size)
    d_frame, d_logits = torch.from_numpy(frame).cuda(), torch.from_numpy(logits).cuda()
    x = torch.empty((1, 3, *model_hw), device="cuda")
    labels = torch.empty(frame_hw, dtype=torch.uint8, device="cuda")
    vis = torch.empty_like(d_frame)
    scratch = torch.empty(model_hw[0] * model_hw[1], dtype=torch.uint8, device="cuda")

    def run():
        kcuda.preprocess(d_frame, model_hw, MEAN, STD, out=x)
        kcuda.postprocess(
            d_logits, frame_hw, palette, d_frame, 0.5, out=labels, overlay_out=vis, scratch=scratch
        )
        torch.cuda.synchronize()

    benchmark.group = f"cuda pre+post {size}"
    benchmark(run)
