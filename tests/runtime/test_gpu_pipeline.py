"""The GPU frame pipeline on a real GPU (marked gpu: skipped without CUDA): PyTorch FP16,
channels-last and CUDA graphs, batches, and its agreement with the CPU path."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.runtime.segmenter import Segmenter

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (540, 960, 3), dtype=np.uint8) for _ in range(4)]


@pytest.fixture(scope="module")
def cuda_ok():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("cuda.bindings.driver")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


# Labels of two float computations of the same model agree except at near-ties: different
# cuDNN algorithms (chosen per batch size), oneDNN against cuDNN, FP16 against FP32 round
# differently. Bounds real rounding cannot cross; a wrong kernel or buffer lands far below.
SAME_MATHS, OTHER_ALGORITHM, OTHER_PRECISION = 1.0, 0.999, 0.995


def test_graph_replays_equal_eager(cuda_ok, tiny_run, frames):
    eager = Segmenter(tiny_run / "best.pt", device="cuda")
    graph = Segmenter(tiny_run / "best.pt", device="cuda", cuda_graph=True)
    assert eager.kernels == graph.kernels == "cuda"
    for _ in range(3):  # eager, capture, replays
        for f in frames:
            a, b = eager(f, 0.5), graph(f, 0.5)
            assert agreement(a.labels, b.labels) >= OTHER_ALGORITHM
            # the overlay is the labels' colours blended exactly: it differs only where they do
            np.testing.assert_array_equal(a.vis[a.labels == b.labels], b.vis[a.labels == b.labels])
    # the same call (same overlay, so the same captured step) now replays
    assert graph(frames[0], 0.5).timings_ms.get("graph") == 1.0
    replayed = [graph(frames[0], 0.5).labels for _ in range(2)]
    assert agreement(*replayed) == SAME_MATHS  # a replay is the same kernels on the same data
    graph.close()
    eager.close()


def test_fp16_agrees_with_fp32(cuda_ok, tiny_run, frames):
    fp32 = Segmenter(tiny_run / "best.pt", device="cuda")
    fp16 = Segmenter(tiny_run / "best.pt", device="cuda", precision="fp16")
    agree = [agreement(fp32(f).labels, fp16(f).labels) for f in frames]
    assert min(agree) >= OTHER_PRECISION, agree


def test_batches_equal_single_frames_and_the_cpu(cuda_ok, tiny_run, frames):
    gpu = Segmenter(tiny_run / "best.pt", device="cuda")
    cpu = Segmenter(tiny_run / "best.pt", device="cpu")
    batch = gpu.segment(frames + [np.ascontiguousarray(frames[0][:300, :500])])
    for f, r in zip(frames, batch):
        assert agreement(r.labels, gpu(f).labels) >= OTHER_ALGORITHM  # cuDNN's per-batch choice
        assert agreement(r.labels, cpu(f).labels) >= OTHER_ALGORITHM  # fp32, not TF32, on the GPU


def test_confidence_on_the_gpu_agrees_with_the_cpu_path(cuda_ok, tiny_run, frames):
    """The CUDA confidence kernels inside the frame pipeline, through graph replays: the CPU
    path's confidence wherever the two float computations of the model give the same label
    (the kernels themselves are byte for byte: test_kernels_cuda.py)."""
    gpu = Segmenter(tiny_run / "best.pt", device="cuda", cuda_graph=True, confidence=True)
    cpu = Segmenter(tiny_run / "best.pt", device="cpu", confidence=True)
    for _ in range(3):  # eager, capture, replay
        for f in frames[:2]:
            a, b = gpu(f), cpu(f)
            same = a.labels == b.labels
            assert same.mean() >= OTHER_ALGORITHM
            diff = np.abs(a.confidence.astype(int) - b.confidence)[same]
            assert diff.max() <= 2 and (diff == 0).mean() >= 0.99
    gpu.close()
