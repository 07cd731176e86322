"""Small plain CNNs for 28x28 grey images (Fashion-MNIST, MNIST): a teacher and an edge-sized student."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from akd_edge.models.layers import check_input, check_positive, conv_bn_relu, global_pool, init_weights, scaled
from akd_edge.models.zoo import register_model

POOL = "M"
"""A 2x2 max-pool in a layer plan."""


class PlainCNN(nn.Module):
    """Conv-BN-ReLU stages with 2x2 max-pools, global average pool and one linear layer."""

    def __init__(self, plan: Sequence[int | str], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in plan:
            if item == POOL:
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn_relu(channels, int(item)))
                channels = int(item)
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(global_pool(self.features(x)))


def _plan(name: str, base: Sequence[int | str], width: float) -> list[int | str]:
    check_positive(name, width=width)
    return [item if item == POOL else scaled(int(item), width) for item in base]


@register_model(
    "cnn-teacher",
    role="teacher",
    description="5 convs 32-pool-64-64-pool-128-128 (BN, ReLU), GAP, linear; ~0.28M params, 22M MACs at 28x28",
)
def cnn_teacher(num_classes: int, input_shape: Sequence[int] = (1, 28, 28), width: float = 1.0) -> PlainCNN:
    """Robust teacher for 28x28 data, small enough for PGD adversarial training on a CPU."""
    channels, _, _ = check_input("cnn-teacher", input_shape, min_size=4)
    plan = _plan("cnn-teacher", [32, POOL, 64, 64, POOL, 128, 128], width)
    return PlainCNN(plan, channels, num_classes)


@register_model(
    "cnn-student",
    role="student",
    description="3 convs 16-32-64 (BN, ReLU, 2 max-pools), GAP, linear; ~24k params at width 1",
)
def cnn_student(num_classes: int, input_shape: Sequence[int] = (1, 28, 28), width: float = 1.0) -> PlainCNN:
    """Edge student (< 100k parameters) distilled from the CNN teacher."""
    channels, _, _ = check_input("cnn-student", input_shape, min_size=4)
    plan = _plan("cnn-student", [16, POOL, 32, POOL, 64], width)
    return PlainCNN(plan, channels, num_classes)
