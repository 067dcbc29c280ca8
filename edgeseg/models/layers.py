"""Building blocks shared by the architectures."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = [
    "ConvBNAct",
    "DepthwiseSeparableConv",
    "SqueezeExcite",
    "init_weights",
    "make_divisible",
]


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (never dropping below 90%).

    Same rule as the reference MobileNet code, so channel counts match the papers.
    """
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


class ConvBNAct(nn.Sequential):
    """``Conv2d`` (no bias, "same" padding) + ``BatchNorm2d`` + optional activation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        dilation: int = 1,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=dilation * (kernel_size - 1) // 2,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act is not None:
            layers.append(act(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class DepthwiseSeparableConv(nn.Sequential):
    """Depthwise ``k x k`` conv-BN-act followed by pointwise 1x1 conv-BN-act."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        act: type[nn.Module] | None = nn.ReLU,
        dilation: int = 1,
    ) -> None:
        dw = ConvBNAct(
            in_channels, in_channels, kernel_size, stride, in_channels, act, dilation=dilation
        )
        super().__init__(
            dw,
            ConvBNAct(in_channels, out_channels, 1, act=act),
        )
        self.out_channels = out_channels


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation with a hard-sigmoid gate (MobileNetV3 flavour)."""

    def __init__(self, channels: int, reduction: int = 4, divisor: int = 8) -> None:
        super().__init__()
        squeezed = make_divisible(channels / reduction, divisor)
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # mean() exports to ONNX ReduceMean for any input size.
        scale = x.mean((2, 3), keepdim=True)
        scale = self.gate(self.fc2(self.act(self.fc1(scale))))
        return x * scale


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan_out) convs with zero bias, BN weight 1 / bias 0, small-normal linears."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
