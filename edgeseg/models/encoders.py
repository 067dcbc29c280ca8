"""Encoders the heads build on: edgeseg's MobileNetV3, or any timm feature extractor.

``encoder="mbv3"`` (the default) is :class:`~edgeseg.models.mobilenetv3.MobileNetV3Encoder`;
``encoder="timm:NAME"`` wraps ``timm.create_model(NAME, features_only=True)`` (timm is an
optional extra: ``pip install timm``). Both return the feature maps at strides 2, 4, 8, 16 and
32 (or 16) and say their widths in ``out_channels`` and strides in ``strides``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from edgeseg._lazy import require
from edgeseg.errors import EdgesegError
from edgeseg.models.mobilenetv3 import MobileNetV3Encoder

__all__ = ["TimmEncoder", "build_encoder", "load_pretrained"]


class TimmEncoder(nn.Module):
    """A timm model's five feature maps (strides 2 to 32, or 16 with ``output_stride=16``)."""

    def __init__(self, name: str, output_stride: int = 32) -> None:
        super().__init__()
        timm = require("timm")
        kwargs = {"output_stride": output_stride} if output_stride != 32 else {}
        try:
            self.model = timm.create_model(
                name, features_only=True, out_indices=(0, 1, 2, 3, 4), pretrained=False, **kwargs
            )
        except (RuntimeError, ValueError, TypeError) as e:
            raise EdgesegError(
                f"timm cannot build '{name}' as a 5-level feature extractor ({e}); pick a model "
                "from timm.list_models() that supports features_only"
            ) from None
        self.name = name
        self.out_channels: list[int] = list(self.model.feature_info.channels())
        self.strides: list[int] = list(self.model.feature_info.reduction())
        want = [2, 4, 8, 16, output_stride]
        if self.strides != want:
            raise EdgesegError(
                f"timm:{name} gives features at strides {self.strides}; the heads need {want} "
                "(models whose first feature is at stride 4, like ConvNeXt, do not fit)"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(x))


def build_encoder(
    encoder: str = "mbv3",
    *,
    variant: str = "small",
    width_mult: float = 1.0,
    minimal: bool = False,
    output_stride: int = 32,
) -> nn.Module:
    """The encoder named by ``encoder`` (``mbv3`` or ``timm:NAME``); ``variant``, ``width_mult``
    and ``minimal`` configure MobileNetV3 only."""
    if encoder == "mbv3":
        return MobileNetV3Encoder(variant, width_mult, minimal=minimal, output_stride=output_stride)
    if encoder.startswith("timm:") and len(encoder) > 5:
        return TimmEncoder(encoder[5:], output_stride)
    raise EdgesegError(f"unknown encoder '{encoder}'; use mbv3 or timm:NAME (a timm model name)")


def load_pretrained(model: nn.Module, source: str) -> str:
    """Load ImageNet weights into ``model.encoder`` (a timm encoder): from a file holding the
    timm model's ``state_dict`` (``torch.save(timm.create_model(NAME).state_dict(), PATH)``), or
    ``hub`` to let timm download them. Returns a one-line account of what was loaded."""
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, TimmEncoder):
        raise EdgesegError(
            "pretrained weights load into a timm encoder: train with --encoder timm:NAME"
        )
    timm = require("timm")
    if source == "hub":
        try:
            fresh = timm.create_model(
                enc.name, features_only=True, out_indices=(0, 1, 2, 3, 4), pretrained=True
            )
        except Exception as e:  # no network, no weights for this name
            raise EdgesegError(
                f"cannot fetch timm:{enc.name}'s pretrained weights ({type(e).__name__}: {e}); "
                "download them elsewhere and pass --pretrained PATH"
            ) from None
        state = fresh.state_dict()
    else:
        path = Path(source)
        if not path.is_file():
            raise EdgesegError(f"pretrained weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = enc.model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise EdgesegError(
            f"{source} holds no weights of timm:{enc.name} (no tensor name and shape matches); "
            "save the timm model's state_dict() for the same model name"
        )
    enc.model.load_state_dict(matched, strict=False)
    return f"loaded {len(matched)} of {len(own)} encoder tensors from {source}"
