"""A tiny timm-style model registry: ``@register_model`` builders, looked up by name."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from edgeseg.errors import EdgesegError, did_you_mean
from edgeseg.models.base import SegmentationModel

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder ``fn(num_classes=..., **kw) -> nn.Module`` under its function name."""
    if fn.__name__ in _MODELS:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered architecture, sorted."""
    return sorted(_MODELS)


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build the architecture ``name`` with ``num_classes`` output channels.

    Raises:
        EdgesegError: ``name`` is not registered (the message lists the known names).
    """
    if name not in _MODELS:
        raise EdgesegError(
            f"unknown model '{name}'{did_you_mean(name, list_models())}; "
            f"choose one of: {', '.join(list_models())}"
        )
    if num_classes < 1:
        raise EdgesegError(f"num_classes must be at least 1, got {num_classes}")
    model = _MODELS[name](num_classes=num_classes, **kwargs)
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"model {name!r} must derive from edgeseg.models.base.SegmentationModel")
    model.arch = name  # the checkpoint and ModelSpec record it
    return model
