"""Normalisation as a layer: every model takes images in [0, 1], so torch and ONNX share one input contract."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from akd_edge.core.errors import ConfigError


def _finite_floats(values: object) -> list[float]:
    """``values`` (a number or a sequence of them) as floats; [] when any is not a finite number."""
    items = [values] if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) else list(values)
    if any(isinstance(v, (str, bytes, bool)) for v in items):
        return []
    try:
        flat = [float(v) for v in items]
    except (TypeError, ValueError):
        return []
    return flat if all(map(math.isfinite, flat)) else []


def _as_channels(values: float | Sequence[float], channels: int, what: str) -> list[float]:
    """Per-channel statistics as ``channels`` floats; a single value is used for every channel.

    The values may come from a checkpoint: anything but finite numbers is a ConfigError, not a traceback.
    """
    flat = _finite_floats(values)
    if not flat:
        raise ConfigError(
            f"normalisation {what} must be a finite number or a list of them (one per channel), got {values!r:.80}"
        )
    if len(flat) == 1:
        flat = flat * channels
    if len(flat) != channels:
        raise ConfigError(
            f"normalisation {what} has {len(flat)} values but the input has {channels} channels; "
            f"give one value per channel (or a single value for all)"
        )
    return flat


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std as buffers (saved in the state dict, exported to ONNX)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(
        self, mean: float | Sequence[float], std: float | Sequence[float], channels: int | None = None
    ) -> None:
        super().__init__()
        if channels is None:
            channels = 1 if isinstance(mean, (int, float)) else len(mean)
        mean_list = _as_channels(mean, channels, "mean")
        std_list = _as_channels(std, channels, "std")
        if min(std_list) <= 0:
            raise ConfigError(f"normalisation std must be > 0 for every channel, got {std_list}")
        self.register_buffer("mean", torch.tensor(mean_list, dtype=torch.float32).reshape(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(std_list, dtype=torch.float32).reshape(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """A network behind its normalisation layer: ``net(normalize(x))`` for images ``x`` in [0, 1]."""

    def __init__(self, normalize: Normalize, net: nn.Module) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))
