"""The PyTorch backend's CUDA settings (the GPU runs themselves are in test_gpu_pipeline.py)."""

from __future__ import annotations

import pytest
import torch

from edgeseg.runtime.backends.torch import _cuda_settings


@pytest.fixture
def restore_flags():
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    )
    yield
    (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cuda.matmul.allow_tf32,
    ) = saved


def test_fp32_on_cuda_is_fp32_not_tf32_and_cudnn_benchmarks(restore_flags):
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # defaults
    _cuda_settings("fp32")
    assert torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32


def test_fp16_leaves_tf32_alone(restore_flags):
    torch.backends.cudnn.allow_tf32 = True
    _cuda_settings("fp16")
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.benchmark
