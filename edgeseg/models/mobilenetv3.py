"""MobileNetV3 encoder (Howard et al., "Searching for MobileNetV3", ICCV 2019).

Built from scratch after Tables 1 (large) and 2 (small) of the paper, without the
classifier. ``forward`` returns the feature maps at strides 2, 4, 8, 16 and 32 (16 for the last
with ``output_stride=16``: its stage dilated, as the paper's segmentation heads use it).

``minimal=True`` is TensorFlow's "minimalistic" MobileNetV3 (timm's ``mobilenetv3_*_minimal``):
ReLU instead of hard-swish, no squeeze-excite, 3x3 depthwise kernels only. It gives up some
accuracy for operators every INT8 runtime fuses (quantized conv + ReLU), which hard-swish and
the SE's global pooling and multiply break on ONNX Runtime's CPU kernels, DLA and NPUs.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

from edgeseg.models.layers import ConvBNAct, SqueezeExcite, init_weights, make_divisible

__all__ = ["InvertedResidual", "MobileNetV3Encoder", "BlockSpec"]


class BlockSpec(NamedTuple):
    """One ``bneck`` row of the paper's tables."""

    kernel: int
    expansion: int  # absolute "exp size" column, before width_mult
    out: int
    se: bool
    hard_swish: bool
    stride: int


# Table 1 of the paper.
LARGE: tuple[BlockSpec, ...] = (
    BlockSpec(3, 16, 16, False, False, 1),
    BlockSpec(3, 64, 24, False, False, 2),
    BlockSpec(3, 72, 24, False, False, 1),
    BlockSpec(5, 72, 40, True, False, 2),
    BlockSpec(5, 120, 40, True, False, 1),
    BlockSpec(5, 120, 40, True, False, 1),
    BlockSpec(3, 240, 80, False, True, 2),
    BlockSpec(3, 200, 80, False, True, 1),
    BlockSpec(3, 184, 80, False, True, 1),
    BlockSpec(3, 184, 80, False, True, 1),
    BlockSpec(3, 480, 112, True, True, 1),
    BlockSpec(3, 672, 112, True, True, 1),
    BlockSpec(5, 672, 160, True, True, 2),
    BlockSpec(5, 960, 160, True, True, 1),
    BlockSpec(5, 960, 160, True, True, 1),
)

# Table 2 of the paper.
SMALL: tuple[BlockSpec, ...] = (
    BlockSpec(3, 16, 16, True, False, 2),
    BlockSpec(3, 72, 24, False, False, 2),
    BlockSpec(3, 88, 24, False, False, 1),
    BlockSpec(5, 96, 40, True, True, 2),
    BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 240, 40, True, True, 1),
    BlockSpec(5, 120, 48, True, True, 1),
    BlockSpec(5, 144, 48, True, True, 1),
    BlockSpec(5, 288, 96, True, True, 2),
    BlockSpec(5, 576, 96, True, True, 1),
    BlockSpec(5, 576, 96, True, True, 1),
)

_CONFIGS = {"small": (SMALL, 576), "large": (LARGE, 960)}


class InvertedResidual(nn.Module):
    """MobileNetV3 ``bneck``: 1x1 expand, k x k depthwise, optional SE, linear 1x1 project."""

    def __init__(
        self,
        in_channels: int,
        exp_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        use_se: bool,
        act: type[nn.Module],
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        # The paper's first block has exp == in: no expansion conv there.
        if exp_channels != in_channels:
            layers.append(ConvBNAct(in_channels, exp_channels, 1, act=act))
        layers.append(
            ConvBNAct(
                exp_channels,
                exp_channels,
                kernel_size,
                stride,
                groups=exp_channels,
                act=act,
                dilation=dilation,
            )
        )
        if use_se:
            layers.append(SqueezeExcite(exp_channels))
        layers.append(ConvBNAct(exp_channels, out_channels, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNetV3Encoder(nn.Module):
    """MobileNetV3-Small or -Large backbone returning 5 feature maps (strides 2..32).

    Attributes:
        out_channels: channels of the maps returned by :meth:`forward`, stride 2 first.
    """

    def __init__(
        self,
        variant: str = "small",
        width_mult: float = 1.0,
        minimal: bool = False,
        output_stride: int = 32,
    ) -> None:
        super().__init__()
        if variant not in _CONFIGS:
            raise ValueError(f"variant must be 'small' or 'large', got {variant!r}")
        if output_stride not in (16, 32):
            raise ValueError(f"output_stride must be 16 or 32, got {output_stride}")
        specs, last_channels = _CONFIGS[variant]
        if minimal:
            specs = tuple(s._replace(kernel=3, se=False, hard_swish=False) for s in specs)
        self.variant, self.width_mult, self.minimal = variant, width_mult, minimal
        hswish = nn.ReLU if minimal else nn.Hardswish

        stem_channels = make_divisible(16 * width_mult)
        stem = ConvBNAct(3, stem_channels, 3, stride=2, act=hswish)

        # One stage per output stride; a stride-2 block opens the next stage. At output stride
        # 16 the last stage keeps stride 16 and dilates its depthwise convolutions instead.
        stages: list[list[nn.Module]] = [[stem]]
        in_channels = stem_channels
        for spec in specs:
            if spec.stride == 2:
                stages.append([])
            dilated = output_stride == 16 and len(stages) == 5
            out_channels = make_divisible(spec.out * width_mult)
            stages[-1].append(
                InvertedResidual(
                    in_channels,
                    make_divisible(spec.expansion * width_mult),
                    out_channels,
                    spec.kernel,
                    1 if dilated else spec.stride,
                    spec.se,
                    nn.Hardswish if spec.hard_swish else nn.ReLU,
                    dilation=2 if dilated else 1,
                )
            )
            in_channels = out_channels
        # Keep the final 1x1 conv (576 / 960 ch): at stride 32 it costs ~2% of the encoder's
        # FLOPs and gives the decoder a wide, hard-swish bottleneck as in the paper. Like the
        # official TF code (and unlike the small table's SE tick), it has no SE.
        last = make_divisible(last_channels * width_mult)
        stages[-1].append(ConvBNAct(in_channels, last, 1, act=hswish))
        assert len(stages) == 5, "MobileNetV3 configs must reach stride 32 in 4 downsamplings"

        self.stages = nn.ModuleList(nn.Sequential(*blocks) for blocks in stages)
        self.out_channels: list[int] = [
            [m for m in stage if hasattr(m, "out_channels")][-1].out_channels
            for stage in self.stages
        ]
        self.strides: list[int] = [2, 4, 8, 16, output_stride]
        init_weights(self)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the feature maps at strides 2, 4, 8, 16, 32."""
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
