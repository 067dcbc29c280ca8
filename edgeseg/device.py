"""Device selection: which PyTorch device a job runs on, and the CUDA index of a device string.

PyTorch is imported inside :func:`resolve_device` only: ONNX and TensorRT users of
:func:`cuda_index` do not load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeseg.errors import EdgesegError

if TYPE_CHECKING:
    import torch

DEVICES = "auto, cpu, cuda or cuda:N"


def cuda_index(device: str) -> int:
    """``"cuda:2"`` -> 2; ``"cuda"`` and ``"auto"`` -> 0."""
    if device.startswith("cuda:"):
        index = device.split(":", 1)[1]
        if not index.isdigit():
            raise EdgesegError(f"device '{device}' is not valid; use {DEVICES}")
        return int(index)
    if device not in ("auto", "cuda", "cpu"):
        raise EdgesegError(f"unknown device '{device}'; use {DEVICES}")
    return 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU is a clear error.

    ``local_rank`` is the GPU of this process when a bare ``cuda`` is asked for (torchrun).
    """
    import torch

    cuda_index(name)  # validates the spelling
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EdgesegError(
            f"device '{name}' was asked for but PyTorch sees no CUDA GPU; "
            "use device cpu, or install a CUDA build of torch"
        )
    index = cuda_index(name) if ":" in name else local_rank
    if index >= torch.cuda.device_count():
        raise EdgesegError(
            f"device '{name}': this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"numbered from 0"
        )
    return torch.device(f"cuda:{index}")


def check_gpu_per_process(local_rank: int, local_world: int, gpus: int) -> None:
    """Each CUDA process needs a GPU of its own (NCCL refuses two ranks on one device): more
    processes than GPUs is an error before any rank joins the group, not a crash inside it."""
    if local_world > gpus or local_rank >= gpus:
        raise EdgesegError(
            f"torchrun started {local_world} processes on this machine but it has {gpus} "
            f"CUDA GPU(s); use --nproc_per_node {gpus} or less, or train on device cpu"
        )
