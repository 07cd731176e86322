"""ResNet-18 for small images: the pre-activation variant (robust-training standard) and the CIFAR variant.

Both use a 3x3 stride-1 stem without max-pool (as for 32x32 CIFAR images), stages of 64-128-256-512
channels (times ``width``) with strides 1-2-2-2, global average pooling and one linear layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from akd_edge.models.layers import check_input, check_positive, global_pool, init_weights, scaled
from akd_edge.models.zoo import register_model

STAGES = (64, 128, 256, 512)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)


def _shortcut(in_ch: int, out_ch: int, stride: int, with_bn: bool) -> nn.Module | None:
    """1x1 projection when the shape changes, else None (identity)."""
    if stride == 1 and in_ch == out_ch:
        return None
    conv = nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_ch)) if with_bn else conv


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, with_bn=True)
        self.relu2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(out + identity)


class PreActBlock(nn.Module):
    """Pre-activation residual block (He et al. 2016): conv(relu(bn(conv(relu(bn(x)))))) + shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride, with_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu1(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + identity


class ResNet(nn.Module):
    """A stem conv, four stages of residual blocks, global average pool and a linear head."""

    def __init__(
        self,
        block: type[BasicBlock] | type[PreActBlock],
        blocks: Sequence[int],
        in_channels: int,
        num_classes: int,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        self.preact = block is PreActBlock
        channels = [scaled(c, width) for c in STAGES]
        self.conv1 = _conv3x3(in_channels, channels[0])
        # Post-activation nets normalise the stem; pre-activation nets normalise before the head instead.
        self.bn1 = None if self.preact else nn.BatchNorm2d(channels[0])
        self.relu1 = None if self.preact else nn.ReLU(inplace=True)
        stages, prev = [], channels[0]
        for i, (ch, n) in enumerate(zip(channels, blocks, strict=True)):
            layers = []
            for j in range(n):
                layers.append(block(prev, ch, stride=2 if (i > 0 and j == 0) else 1))
                prev = ch
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn_final = nn.BatchNorm2d(prev) if self.preact else None
        self.relu_final = nn.ReLU(inplace=True) if self.preact else None
        self.fc = nn.Linear(prev, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        if self.bn1 is not None:
            out = self.relu1(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.bn_final is not None:
            out = self.relu_final(self.bn_final(out))
        return self.fc(global_pool(out))


@register_model(
    "preact-resnet18",
    role="teacher",
    description="PreAct-ResNet-18 (CIFAR stem), the robust-training reference; ~11.2M params",
)
def preact_resnet18(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), width: float = 1.0) -> ResNet:
    """Pre-activation ResNet-18 as in the adversarial-training literature (Rice et al. 2020)."""
    channels, _, _ = check_input("preact-resnet18", input_shape)
    check_positive("preact-resnet18", width=width)
    return ResNet(PreActBlock, (2, 2, 2, 2), channels, num_classes, width)


@register_model(
    "resnet18",
    role="student",
    description="ResNet-18, CIFAR variant (3x3 stem, no max-pool); ~11.2M params",
)
def resnet18(num_classes: int, input_shape: Sequence[int] = (3, 32, 32), width: float = 1.0) -> ResNet:
    """CIFAR ResNet-18, the usual student of WideResNet teachers in the AKD/ARD/RSLAD papers."""
    channels, _, _ = check_input("resnet18", input_shape)
    check_positive("resnet18", width=width)
    return ResNet(BasicBlock, (2, 2, 2, 2), channels, num_classes, width)
