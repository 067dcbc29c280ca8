"""One process, or one of a torchrun job: its rank, the process group, the seeds."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from edgeseg.device import check_gpu_per_process


@dataclass
class DistInfo:
    """This process's place in a torchrun job (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when there is one (gloo on CPU, NCCL on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return DistInfo()
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        check_gpu_per_process(local_rank, local_world, torch.cuda.device_count())
    dist.init_process_group("nccl" if cuda else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def _seed_worker(worker_id: int) -> None:
    import cv2

    cv2.setNumThreads(1)  # workers share the cores with the training process
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
