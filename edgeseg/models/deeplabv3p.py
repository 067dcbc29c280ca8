"""A light DeepLabV3+ (Chen et al., ECCV 2018) on MobileNetV3: atrous spatial pyramid pooling
with depthwise-separable branches on the stride-16 features (the encoder's last stage dilated),
image pooling, and a decoder that joins the stride-4 features through a narrow 1x1 skip and
refines with two depthwise-separable convolutions."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.models._registry import register_model
from edgeseg.models.base import SegmentationModel
from edgeseg.models.encoders import build_encoder
from edgeseg.models.layers import ConvBNAct, DepthwiseSeparableConv, init_weights

__all__ = ["DeepLabV3Plus", "SeparableASPP", "mbv3_deeplabv3p"]


class SeparableASPP(nn.Module):
    """ASPP with depthwise-separable atrous branches: 1x1, one 3x3 per rate, image pooling;
    concatenated and projected to ``out_channels``."""

    def __init__(
        self, in_channels: int, out_channels: int, rates: tuple[int, ...], dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNAct(in_channels, out_channels, 1)]
            + [DepthwiseSeparableConv(in_channels, out_channels, 3, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1))
        self.project = nn.Sequential(
            ConvBNAct(out_channels * (len(rates) + 2), out_channels, 1), nn.Dropout2d(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [b(x) for b in self.branches]
        # Image pooling without BatchNorm: one value per channel and image has no statistics.
        outs.append(F.relu(self.pool(x)).expand_as(outs[0]))
        return self.project(torch.cat(outs, dim=1))


class DeepLabV3Plus(SegmentationModel):
    """Encoder (output stride 16) + separable ASPP + DeepLabV3+ decoder; logits at input size.

    Args:
        num_classes: output channels.
        variant, width_mult, minimal: the MobileNetV3 encoder's.
        aspp_channels: width of ASPP and decoder.
        rates: the atrous rates at stride 16.
        skip_channels: width the stride-4 features are projected to before joining.
        encoder: ``mbv3`` or ``timm:NAME``.
    """

    output_stride = 1
    logits_stride = 4  # of the logits before the trailing resize

    def __init__(
        self,
        num_classes: int,
        variant: str = "small",
        width_mult: float = 1.0,
        minimal: bool = False,
        aspp_channels: int = 128,
        rates: tuple[int, ...] = (6, 12, 18),
        skip_channels: int = 48,
        encoder: str = "mbv3",
    ) -> None:
        super().__init__(num_classes)
        self.encoder = build_encoder(
            encoder, variant=variant, width_mult=width_mult, minimal=minimal, output_stride=16
        )
        enc = self.encoder.out_channels
        self.aspp = SeparableASPP(enc[4], aspp_channels, tuple(rates))
        self.skip = ConvBNAct(enc[1], skip_channels, 1)
        self.decoder = nn.Sequential(
            DepthwiseSeparableConv(aspp_channels + skip_channels, aspp_channels),
            DepthwiseSeparableConv(aspp_channels, aspp_channels),
        )
        self.classifier = nn.Conv2d(aspp_channels, num_classes, 1)
        for m in (self.aspp, self.skip, self.decoder, self.classifier):
            init_weights(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized ``N x 3 x H x W`` images to ``N x num_classes x H x W`` logits."""
        features = self.encoder(x)
        y = self.aspp(features[4])
        y = F.interpolate(y, scale_factor=4.0, mode="bilinear", align_corners=False)
        y = self.decoder(torch.cat([y, self.skip(features[1])], dim=1))
        logits = self.classifier(y)
        return F.interpolate(logits, scale_factor=4.0, mode="bilinear", align_corners=False)


@register_model
def mbv3_deeplabv3p(num_classes: int, **kwargs) -> nn.Module:
    """MobileNetV3-Small (``variant="large"`` for the larger) + light DeepLabV3+."""
    return DeepLabV3Plus(num_classes, **kwargs)
