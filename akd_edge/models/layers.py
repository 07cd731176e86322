"""Building blocks shared by the architectures, limited to ops every mobile execution provider runs.

Heads pool with ``x.mean((2, 3))``: it exports to a single ``ReduceMean`` (no ``Flatten``, no shape
arithmetic), works for any spatial size, and torch-pruning traces it as a channel-preserving op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from akd_edge.core.errors import ConfigError


def global_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average pool ``[N, C, H, W] -> [N, C]``."""
    return x.mean((2, 3))


def conv_bn_relu(in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm -> ReLU, with 'same' padding for odd kernels."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def init_weights(module: nn.Module) -> None:
    """He initialisation for convs and unit BatchNorm (the usual CNN recipe); linear heads keep torch defaults."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def scaled(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1."""
    return max(1, int(round(channels * width)))


def check_input(name: str, input_shape: Sequence[int], min_size: int = 1) -> tuple[int, int, int]:
    """Validate ``(C, H, W)`` and return it as ints; ``min_size`` is the smallest H and W the network takes."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"model {name}: input_shape must be (channels, height, width) > 0, got {tuple(input_shape)}")
    if min(shape[1:]) < min_size:
        raise ConfigError(f"model {name}: images must be at least {min_size}x{min_size}, got {shape[1]}x{shape[2]}")
    return shape  # type: ignore[return-value]


def check_positive(name: str, **values: float) -> None:
    """Raise ConfigError naming each keyword that is not > 0."""
    for key, value in values.items():
        if not value > 0:
            raise ConfigError(f"model {name}: {key} must be > 0, got {value}")
