"""PyTorch backend for ``.pt`` checkpoints: on CUDA when present, the GPU path we can verify."""

from __future__ import annotations

import os

import numpy as np
import torch

from edgeseg.device import resolve_device
from edgeseg.models.checkpoint import load_model


class TorchBackend:
    """Runs a training checkpoint directly (eager PyTorch)."""

    name = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "auto") -> None:
        dev = resolve_device(device)
        self.model, self.spec, _ = load_model(path, dev)
        self.device = str(dev)
        self._dev = dev

    @torch.no_grad()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._dev)
        return self.model(x).float().cpu().numpy()

    @torch.no_grad()
    def infer_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """Device tensor in, device tensor out: no host copies (the GPU pipeline's step)."""
        return self.model(x)
