"""MobileNetV3 with LR-ASPP, the segmentation head of "Searching for MobileNetV3" (Howard et
al., ICCV 2019, section 6.4): the encoder's last stage dilated to stride 16, a 1x1 convolution
gated by a global-pooled sigmoid (squeeze-excite-like attention over the whole image), upsampled
to stride 8 and added to a classifier on the stride-8 features. Few FLOPs beyond the encoder."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.models._registry import register_model
from edgeseg.models.base import SegmentationModel
from edgeseg.models.encoders import build_encoder
from edgeseg.models.layers import ConvBNAct, init_weights

__all__ = ["LRASPP", "mbv3_lraspp_large", "mbv3_lraspp_small"]


class LRASPP(SegmentationModel):
    """Encoder (output stride 16) + Lite R-ASPP head; logits at input size.

    Args:
        num_classes: output channels.
        variant, width_mult, minimal: the MobileNetV3 encoder's.
        inter_channels: width of the head's 1x1 branch (128 in the paper).
        low_stride: stride of the low-level features classified beside the head: 8 (the paper)
            or 4 (finer logits for thin structures, for a 1x1 convolution more).
        encoder: ``mbv3`` or ``timm:NAME``.
    """

    output_stride = 1
    logits_stride = 8  # of the logits before the trailing resize

    def __init__(
        self,
        num_classes: int,
        variant: str = "small",
        width_mult: float = 1.0,
        minimal: bool = False,
        inter_channels: int = 128,
        low_stride: int = 8,
        encoder: str = "mbv3",
    ) -> None:
        super().__init__(num_classes)
        if low_stride not in (4, 8):
            raise ValueError(f"low_stride must be 4 or 8, got {low_stride}")
        self.logits_stride = low_stride
        self.encoder = build_encoder(
            encoder, variant=variant, width_mult=width_mult, minimal=minimal, output_stride=16
        )
        self.low_level = {4: 1, 8: 2}[low_stride]  # index of the low-level feature map
        low, high = self.encoder.out_channels[self.low_level], self.encoder.out_channels[4]
        self.cbr = ConvBNAct(high, inter_channels, 1)
        self.scale = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(high, inter_channels, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)
        for m in (self.cbr, self.scale, self.low_classifier, self.high_classifier):
            init_weights(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized ``N x 3 x H x W`` images to ``N x num_classes x H x W`` logits."""
        features = self.encoder(x)
        low, high = features[self.low_level], features[4]  # strides 8 (or 4) and 16
        up = 16.0 / self.logits_stride
        y = self.cbr(high) * self.scale(high)
        y = F.interpolate(y, scale_factor=up, mode="bilinear", align_corners=False)
        logits = self.low_classifier(low) + self.high_classifier(y)
        return F.interpolate(
            logits, scale_factor=float(self.logits_stride), mode="bilinear", align_corners=False
        )


@register_model
def mbv3_lraspp_small(num_classes: int, **kwargs) -> nn.Module:
    """MobileNetV3-Small + LR-ASPP (the paper's small segmentation model)."""
    return LRASPP(num_classes, variant="small", **kwargs)


@register_model
def mbv3_lraspp_large(num_classes: int, **kwargs) -> nn.Module:
    """MobileNetV3-Large + LR-ASPP (torchvision's ``lraspp_mobilenet_v3_large`` layout)."""
    return LRASPP(num_classes, variant="large", **kwargs)
