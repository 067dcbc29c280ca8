"""Parameter and FLOP counts."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_gflops", "count_params", "deployed_params"]


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; buffers excluded), training-only heads included."""
    return sum(p.numel() for p in model.parameters())


def deployed_params(model: nn.Module, input_hw: tuple[int, int]) -> int:
    """Parameters of the network as deployed: those of the modules an eval-mode forward runs
    (training-only heads, such as BiSeNetV2's boosters, are not exported)."""
    used: set[int] = set()
    hooks = [m.register_forward_hook(lambda mod, i, o: used.add(id(mod))) for m in model.modules()]
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, *input_hw, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sum(
        p.numel() for m in model.modules() if id(m) in used for p in m.parameters(recurse=False)
    )


def count_gflops(model: nn.Module, input_hw: tuple[int, int]) -> float:
    """GFLOPs of one eval-mode forward pass on a ``1 x 3 x H x W`` input.

    Measured with :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
    **2 FLOPs per multiply-add** (so this is twice the "GMACs" many papers quote)
    and only matmul/conv-like ops (not BN, activations, pooling or resizing).
    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    device = next(model.parameters()).device
    x = torch.zeros(1, 3, *input_hw, device=device)
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9
