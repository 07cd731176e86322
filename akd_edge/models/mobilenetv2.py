"""MobileNetV2 (Sandler et al. 2018), CIFAR variant: stride-1 stem and second stage, so 32x32 keeps detail."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from akd_edge.models.layers import check_input, check_positive, global_pool, init_weights
from akd_edge.models.zoo import register_model

# (expansion t, output channels c, repeats n, first stride s). ImageNet uses s=2 for the stem and the
# 24-channel stage; here both are 1, so a 32x32 image ends at 4x4 (28x28 at 4x4 too) instead of 1x1.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of ``divisor`` without going below 90% of ``value`` (torchvision's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn_relu6(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection; identity shortcut when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu6(in_ch, hidden, kernel=1))
        layers += [
            _conv_bn_relu6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem, inverted-residual stages, 1x1 conv to ``last_channels``, GAP and a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int, width_mult: float = 1.0) -> None:
        super().__init__()
        stem = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [_conv_bn_relu6(in_channels, stem)]
        prev = stem
        for expansion, channels, repeats, stride in SETTINGS:
            out = make_divisible(channels * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(prev, out, stride if i == 0 else 1, expansion))
                prev = out
        layers.append(_conv_bn_relu6(prev, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_pool(self.features(x)))


@register_model(
    "mobilenetv2",
    role="student",
    description="MobileNetV2, CIFAR variant (stride-1 stem and 2nd stage), width_mult kwarg; ~2.2M params",
)
def mobilenetv2(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), width_mult: float = 1.0) -> MobileNetV2:
    """Mobile student: depthwise-separable inverted residuals, ReLU6, runs on NNAPI/CoreML execution providers."""
    channels, _, _ = check_input("mobilenetv2", input_shape)
    check_positive("mobilenetv2", width_mult=width_mult)
    return MobileNetV2(channels, num_classes, width_mult)
