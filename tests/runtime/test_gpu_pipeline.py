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


def test_graph_replays_equal_eager_exactly(cuda_ok, tiny_run, frames):
    eager = Segmenter(tiny_run / "best.pt", device="cuda")
    graph = Segmenter(tiny_run / "best.pt", device="cuda", cuda_graph=True)
    assert eager.kernels == graph.kernels == "cuda"
    for _ in range(3):  # eager, capture, replays
        for f in frames:
            a, b = eager(f, 0.5), graph(f, 0.5)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.vis, b.vis)
    assert graph(frames[0]).timings_ms.get("graph") == 1.0
    graph.close()
    eager.close()


def test_fp16_agrees_with_fp32(cuda_ok, tiny_run, frames):
    fp32 = Segmenter(tiny_run / "best.pt", device="cuda")
    fp16 = Segmenter(tiny_run / "best.pt", device="cuda", precision="fp16")
    agree = [(fp32(f).labels == fp16(f).labels).mean() for f in frames]
    assert min(agree) >= 0.995, agree


def test_batches_equal_single_frames_and_the_cpu(cuda_ok, tiny_run, frames):
    gpu = Segmenter(tiny_run / "best.pt", device="cuda")
    cpu = Segmenter(tiny_run / "best.pt", device="cpu")
    batch = gpu.segment(frames + [np.ascontiguousarray(frames[0][:300, :500])])
    for f, r in zip(frames, batch):
        np.testing.assert_array_equal(r.labels, gpu(f).labels)
        assert (r.labels == cpu(f).labels).mean() > 0.995  # cuDNN and oneDNN round differently
