"""BiSeNetV2 (Yu et al., "BiSeNet V2: Bilateral Network with Guided Aggregation for
Real-time Semantic Segmentation", IJCV 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgeseg.models._registry import register_model
from edgeseg.models.base import SegmentationModel
from edgeseg.models.layers import ConvBNAct, init_weights

__all__ = ["BiSeNetV2", "bisenetv2"]


def _upsample(x: torch.Tensor, factor: int) -> torch.Tensor:
    # scale_factor (not size=) keeps the ONNX Resize free of shape arithmetic.
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


class DetailBranch(nn.Module):
    """Wide, shallow branch: 3 stages (64, 64, 128 ch), each opened by a stride-2 conv."""

    def __init__(self, channels: tuple[int, int, int] = (64, 64, 128)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.s1 = nn.Sequential(ConvBNAct(3, c1, 3, 2), ConvBNAct(c1, c1, 3))
        self.s2 = nn.Sequential(ConvBNAct(c1, c2, 3, 2), ConvBNAct(c2, c2, 3), ConvBNAct(c2, c2, 3))
        self.s3 = nn.Sequential(ConvBNAct(c2, c3, 3, 2), ConvBNAct(c3, c3, 3), ConvBNAct(c3, c3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.s3(self.s2(self.s1(x)))


class StemBlock(nn.Module):
    """Semantic-branch stem: stride-2 conv, then a conv path and a max-pool path, fused."""

    def __init__(self, out_channels: int = 16) -> None:
        super().__init__()
        self.conv = ConvBNAct(3, out_channels, 3, 2)
        self.left = nn.Sequential(
            ConvBNAct(out_channels, out_channels // 2, 1),
            ConvBNAct(out_channels // 2, out_channels, 3, 2),
        )
        self.right = nn.MaxPool2d(3, stride=2, padding=1)
        self.fuse = ConvBNAct(2 * out_channels, out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.fuse(torch.cat([self.left(x), self.right(x)], dim=1))


class GatherExpand(nn.Module):
    """Gather-and-Expand layer (Fig. 5 b/c): stride 1 keeps width, stride 2 halves resolution."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, expansion: int = 6):
        super().__init__()
        mid = in_channels * expansion
        self.gather = ConvBNAct(in_channels, in_channels, 3)
        if stride == 1:
            if in_channels != out_channels:
                raise ValueError("a stride-1 GE layer keeps its width")
            self.expand = ConvBNAct(in_channels, mid, 3, groups=in_channels, act=None)
            self.shortcut: nn.Module = nn.Identity()
        else:
            # Two depthwise convs: the strided one, then one more to enlarge the receptive field.
            self.expand = nn.Sequential(
                ConvBNAct(in_channels, mid, 3, 2, groups=in_channels, act=None),
                ConvBNAct(mid, mid, 3, groups=mid, act=None),
            )
            self.shortcut = nn.Sequential(
                ConvBNAct(in_channels, in_channels, 3, 2, groups=in_channels, act=None),
                ConvBNAct(in_channels, out_channels, 1, act=None),
            )
        self.project = ConvBNAct(mid, out_channels, 1, act=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.expand(self.gather(x)))
        return self.act(out + self.shortcut(x))


class ContextEmbedding(nn.Module):
    """Global average pooling + BN + 1x1 conv, broadcast-added, then a 3x3 conv."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv_gap = ConvBNAct(channels, channels, 1)
        self.conv_last = ConvBNAct(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean() exports as ReduceMean, valid for every input size.
        context = self.conv_gap(self.bn(x.mean((2, 3), keepdim=True)))
        return self.conv_last(x + context)


class SemanticBranch(nn.Module):
    """Narrow, deep branch (lambda = 1/4: 16, 32, 64, 128 ch); also returns the aux taps."""

    def __init__(self, channels: tuple[int, int, int, int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        c2, c3, c4, c5 = channels
        self.stem = StemBlock(c2)  # stride 4
        self.s3 = nn.Sequential(GatherExpand(c2, c3, 2), GatherExpand(c3, c3))  # stride 8
        self.s4 = nn.Sequential(GatherExpand(c3, c4, 2), GatherExpand(c4, c4))  # stride 16
        self.s5 = nn.Sequential(  # stride 32
            GatherExpand(c4, c5, 2),
            GatherExpand(c5, c5),
            GatherExpand(c5, c5),
            GatherExpand(c5, c5),
        )
        self.ce = ContextEmbedding(c5)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x2 = self.stem(x)
        x3 = self.s3(x2)
        x4 = self.s4(x3)
        x5 = self.s5(x4)
        return self.ce(x5), [x2, x3, x4, x5]


class BilateralGuidedAggregation(nn.Module):
    """BGA layer (Fig. 6): each branch gates the other at its own resolution, then sum."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        c = channels
        self.detail_keep = nn.Sequential(
            ConvBNAct(c, c, 3, groups=c, act=None), nn.Conv2d(c, c, 1, bias=False)
        )
        self.detail_down = nn.Sequential(
            ConvBNAct(c, c, 3, 2, act=None), nn.AvgPool2d(3, stride=2, padding=1)
        )
        self.semantic_up = ConvBNAct(c, c, 3, act=None)
        self.semantic_keep = nn.Sequential(
            ConvBNAct(c, c, 3, groups=c, act=None), nn.Conv2d(c, c, 1, bias=False)
        )
        self.fuse = ConvBNAct(c, c, 3)

    def forward(self, detail: torch.Tensor, semantic: torch.Tensor) -> torch.Tensor:
        # detail is at stride 8, semantic at stride 32.
        high = self.detail_keep(detail) * torch.sigmoid(_upsample(self.semantic_up(semantic), 4))
        low = self.detail_down(detail) * torch.sigmoid(self.semantic_keep(semantic))
        return self.fuse(high + _upsample(low, 4))


class SegHead(nn.Module):
    """3x3 conv-BN-ReLU to ``mid`` ch, dropout, 1x1 to classes, bilinear upsample to input."""

    def __init__(
        self, in_channels: int, mid_channels: int, num_classes: int, up: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, mid_channels, 3)
        self.dropout = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(mid_channels, num_classes, 1)
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(self.cls(self.dropout(self.conv(x))), self.up)


class BiSeNetV2(SegmentationModel):
    """Two-branch real-time segmenter with booster (auxiliary) heads used only in training.

    Args:
        num_classes: output channels.
        aux_heads: build the 4 semantic-branch auxiliary heads (strides 4, 8, 16, 32);
            in ``train()`` mode ``forward`` then returns ``(logits, [aux logits...])``.
        head_channels: width ``C_t`` of the main head's 3x3 conv (1024 as in the
            reference implementations).
        aux_head_channels: width of each auxiliary head's 3x3 conv.
    """

    output_stride = 1
    logits_stride = 8  # of the logits before the trailing resize

    def __init__(
        self,
        num_classes: int,
        aux_heads: bool = True,
        head_channels: int = 1024,
        aux_head_channels: int = 128,
    ) -> None:
        super().__init__(num_classes)
        self.detail = DetailBranch()
        self.semantic = SemanticBranch()
        self.bga = BilateralGuidedAggregation(128)
        self.head = SegHead(128, head_channels, num_classes, up=8)
        self.aux_heads: nn.ModuleList | None = None
        if aux_heads:
            self.aux_heads = nn.ModuleList(
                SegHead(c, aux_head_channels, num_classes, up=s)
                for c, s in zip((16, 32, 64, 128), (4, 8, 16, 32))
            )
        init_weights(self)

    def pruning_ignored(self) -> list[nn.Module]:
        """Layers structured pruning must leave whole: a gather-and-expand block's input width is
        tied to its grouped channel-multiplier convolution, which torch-pruning cannot split."""
        return [m.gather[0] for m in self.modules() if isinstance(m, GatherExpand)]

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits at input size; in training with aux heads, ``(logits, aux_logits)``."""
        semantic, taps = self.semantic(x)
        logits = self.head(self.bga(self.detail(x), semantic))
        if self.training and self.aux_heads is not None:
            return logits, [head(t) for head, t in zip(self.aux_heads, taps)]
        return logits


@register_model
def bisenetv2(num_classes: int, **kwargs) -> nn.Module:
    """BiSeNetV2 with booster heads (``aux_heads=True``), logits at input resolution."""
    return BiSeNetV2(num_classes, **kwargs)
