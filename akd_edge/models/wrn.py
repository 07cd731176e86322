"""WideResNet (Zagoruyko & Komodakis 2016) as used by TRADES, AKD and RobustBench, without dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from akd_edge.core.errors import ConfigError
from akd_edge.models.layers import check_input, global_pool, init_weights
from akd_edge.models.resnet import PreActBlock
from akd_edge.models.zoo import register_model


class WideBlock(PreActBlock):
    """Pre-activation block; the 1x1 projection (when shapes change) reads the activated input, as in TRADES.

    It is ResNet's :class:`~akd_edge.models.resnet.PreActBlock` under the name WRN checkpoints and exports know.
    """


class WideResNet(nn.Module):
    """WRN-depth-width: a 16-channel stem, three groups of (depth - 4) / 6 blocks, BN-ReLU, GAP, linear."""

    def __init__(self, depth: int, width: int, in_channels: int, num_classes: int) -> None:
        super().__init__()
        blocks = (depth - 4) // 6
        channels = [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(in_channels, channels[0], 3, padding=1, bias=False)
        groups, prev = [], channels[0]
        for i, ch in enumerate(channels[1:]):
            layers = []
            for j in range(blocks):
                layers.append(WideBlock(prev, ch, stride=2 if (i > 0 and j == 0) else 1))
                prev = ch
            groups.append(nn.Sequential(*layers))
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(prev)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(prev, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(global_pool(self.relu(self.bn(out))))


def wide_resnet(
    num_classes: int, input_shape: Sequence[int] = (3, 32, 32), depth: int = 28, width: int = 10
) -> WideResNet:
    """WRN-``depth``-``width``; ``depth`` must be 6n + 4."""
    channels, _, _ = check_input(f"wrn-{depth}-{width}", input_shape)
    if depth < 10 or (depth - 4) % 6:
        raise ConfigError(f"model wrn: depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
    if int(width) < 1:
        raise ConfigError(f"model wrn: width must be an integer >= 1, got {width}")
    return WideResNet(int(depth), int(width), channels, num_classes)


@register_model("wrn-28-10", role="teacher", description="WideResNet-28-10 (dropout 0); ~36.5M params")
def wrn_28_10(
    num_classes: int, input_shape: Sequence[int] = (3, 32, 32), depth: int = 28, width: int = 10
) -> WideResNet:
    """WideResNet-28-10, the common robust CIFAR teacher; ``depth``/``width`` give other WRNs."""
    return wide_resnet(num_classes, input_shape, depth, width)


@register_model(
    "wrn-34-10", role="teacher", description="WideResNet-34-10 (dropout 0), the TRADES/AKD teacher; ~46.2M params"
)
def wrn_34_10(
    num_classes: int, input_shape: Sequence[int] = (3, 32, 32), depth: int = 34, width: int = 10
) -> WideResNet:
    """WideResNet-34-10 as in TRADES and the AKD paper; ``depth``/``width`` give other WRNs."""
    return wide_resnet(num_classes, input_shape, depth, width)
