"""MobileNetV3 encoder + light depthwise-separable U-Net decoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.models._registry import register_model
from edgeseg.models.base import SegmentationModel
from edgeseg.models.encoders import build_encoder
from edgeseg.models.layers import ConvBNAct, DepthwiseSeparableConv, init_weights

__all__ = [
    "MobileNetV3UNet",
    "mbv3_unet_large",
    "mbv3_unet_large_minimal",
    "mbv3_unet_small",
    "mbv3_unet_small_minimal",
]

_DEFAULT_DECODER = {"small": (96, 64, 32, 24), "large": (128, 80, 40, 24)}


def _up2(x: torch.Tensor) -> torch.Tensor:
    # scale_factor (not size=) keeps the ONNX Resize free of shape arithmetic.
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class DecoderBlock(nn.Module):
    """Upsample x2, fuse the skip at that stride, refine with one depthwise-separable conv.

    ``fuse="cat"``: concatenate, then the separable conv mixes both inputs (standard
    U-Net; keeps most information, cheap at the coarse strides).
    ``fuse="add"``: a linear 1x1 conv projects the deep input to the skip's width while
    still at the *low* resolution (a 1x1 conv commutes with bilinear upsampling), then the
    two are summed (FPN / LinkNet style). Every tensor at the high resolution then has only
    the skip's width (16 ch at stride 2 instead of 32 + 16 concatenated), which matters on
    CPU where the upsample / BN / ReLU passes over large maps are memory-bound.
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, fuse: str = "cat"
    ) -> None:
        super().__init__()
        if fuse not in ("cat", "add"):
            raise ValueError(f"fuse must be 'cat' or 'add', got {fuse!r}")
        self.fuse = fuse
        if fuse == "add":
            self.proj: nn.Module = ConvBNAct(in_channels, skip_channels, 1, act=None)
            self.refine = DepthwiseSeparableConv(skip_channels, out_channels)
        else:
            self.proj = nn.Identity()
            self.refine = DepthwiseSeparableConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = _up2(self.proj(x))
        x = x + skip if self.fuse == "add" else torch.cat([x, skip], dim=1)
        return self.refine(x)


class MobileNetV3UNet(SegmentationModel):
    """MobileNetV3 encoder with a U-Net decoder up to stride 2, logits at input size.

    Args:
        num_classes: output channels.
        variant: ``"small"`` or ``"large"`` encoder.
        width_mult: encoder width multiplier.
        decoder_channels: widths of the 4 decoder blocks (strides 16, 8, 4, 2).
        dropout: 2-D dropout before the classifier.
        fuse: ``"cat"`` or ``"add"`` per decoder block (strides 16, 8, 4, 2). The default
            adds at stride 2 only, the block that dominated a CPU training step (see
            docs/training.md), while the coarse strides keep the more expressive concatenation.
        minimal: the "minimalistic" MobileNetV3 encoder (ReLU, no SE, 3x3 only): INT8-friendly.
        encoder: ``mbv3`` or ``timm:NAME`` (see :mod:`edgeseg.models.encoders`).
    """

    output_stride = 1
    logits_stride = 2  # of the logits before the trailing resize

    def __init__(
        self,
        num_classes: int,
        variant: str = "small",
        width_mult: float = 1.0,
        decoder_channels: tuple[int, ...] | None = None,
        dropout: float = 0.1,
        fuse: tuple[str, ...] = ("cat", "cat", "cat", "add"),
        minimal: bool = False,
        encoder: str = "mbv3",
    ) -> None:
        super().__init__(num_classes)
        if decoder_channels is None:
            decoder_channels = _DEFAULT_DECODER[variant]
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels needs 4 widths, got {tuple(decoder_channels)}")
        if len(fuse) != 4:
            raise ValueError(f"fuse needs 4 modes, got {tuple(fuse)}")
        self.encoder = build_encoder(
            encoder, variant=variant, width_mult=width_mult, minimal=minimal
        )
        enc = self.encoder.out_channels  # strides 2, 4, 8, 16, 32

        blocks = []
        in_channels = enc[4]
        for skip_channels, out_channels, mode in zip(enc[3::-1], decoder_channels, fuse):
            blocks.append(DecoderBlock(in_channels, skip_channels, out_channels, mode))
            in_channels = out_channels
        self.decoder = nn.ModuleList(blocks)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(in_channels, num_classes, 1)
        init_weights(self.decoder)
        init_weights(self.classifier)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized ``N x 3 x H x W`` images to ``N x num_classes x H x W`` logits."""
        f2, f4, f8, f16, f32 = self.encoder(x)
        y = f32
        for block, skip in zip(self.decoder, (f16, f8, f4, f2)):
            y = block(y, skip)
        # Classify at stride 2 and upsample the few logit channels, not the features.
        return _up2(self.classifier(self.dropout(y)))


@register_model
def mbv3_unet_small(num_classes: int, **kwargs) -> nn.Module:
    """MobileNetV3-Small U-Net (~1.0 M params); decoder widths (96, 64, 32, 24) by default.

    Keyword arguments go to :class:`MobileNetV3UNet` (``width_mult``, ``decoder_channels``,
    ``dropout``, ``fuse``).
    """
    return MobileNetV3UNet(num_classes, variant="small", **kwargs)


@register_model
def mbv3_unet_large(num_classes: int, **kwargs) -> nn.Module:
    """MobileNetV3-Large U-Net (~3.1 M params); decoder widths (128, 80, 40, 24) by default.

    Keyword arguments go to :class:`MobileNetV3UNet` (``width_mult``, ``decoder_channels``,
    ``dropout``, ``fuse``).
    """
    return MobileNetV3UNet(num_classes, variant="large", **kwargs)


@register_model
def mbv3_unet_small_minimal(num_classes: int, **kwargs) -> nn.Module:
    """:func:`mbv3_unet_small` on the minimalistic encoder (ReLU, no SE, 3x3): INT8-friendly."""
    return MobileNetV3UNet(num_classes, variant="small", minimal=True, **kwargs)


@register_model
def mbv3_unet_large_minimal(num_classes: int, **kwargs) -> nn.Module:
    """:func:`mbv3_unet_large` on the minimalistic encoder (ReLU, no SE, 3x3): INT8-friendly."""
    return MobileNetV3UNet(num_classes, variant="large", minimal=True, **kwargs)
