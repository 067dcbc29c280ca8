"""Device selection: the spelling of a device, CUDA indices, and one GPU per torchrun process."""

import pytest
import torch

from edgeseg.device import check_gpu_per_process, cuda_index, resolve_device
from edgeseg.errors import EdgesegError


def test_cuda_index_of_each_spelling():
    assert (cuda_index("cuda:3"), cuda_index("cuda"), cuda_index("auto"), cuda_index("cpu")) == (
        3,
        0,
        0,
        0,
    )
    for bad in ("cuda:x", "gpu", "cuda:"):
        with pytest.raises(EdgesegError, match="device"):
            cuda_index(bad)


def test_resolve_device_names_the_setting_and_the_fix():
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(EdgesegError, match="device 'cuda:1' was asked for.*device cpu"):
        resolve_device("cuda:1")
    with pytest.raises(EdgesegError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_more_cuda_processes_than_gpus_is_refused_before_the_group_forms():
    check_gpu_per_process(1, 2, 2)
    with pytest.raises(
        EdgesegError,
        match="started 2 processes on this machine but it has 1 CUDA GPU.*--nproc_per_node 1",
    ):
        check_gpu_per_process(0, 2, 1)
    with pytest.raises(EdgesegError, match="device cpu"):
        check_gpu_per_process(0, 1, 0)
