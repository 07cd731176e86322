"""Robust accuracy: per-sample flags combined into accuracies with intervals, and the epsilon curve.

Every function here works on the flags of one batch (or of a test set), so the caller streams a test set of
any size in flat memory: a sample is robust under a set of attacks only when it is classified correctly and
no attack fools it (the worst case per sample, as AutoAttack reports it). The attacks that produce the flags
are :mod:`akd_edge.attacks.suite`; the streaming engine that runs them is :mod:`akd_edge.evaluation.engine`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from akd_edge.attacks.suite import AttackSpec, predict, run_attack
from akd_edge.core.errors import UsageError
from akd_edge.core.interval import wilson_interval


def accuracy(flags: torch.Tensor | Sequence[bool]) -> dict[str, Any]:
    """Accuracy of a bool flag vector with its count and 95% Wilson score interval (the test-set noise;
    :func:`akd_edge.core.interval.wilson_interval`)."""
    flags = torch.as_tensor(flags, dtype=torch.bool)
    n, k = int(flags.numel()), int(flags.sum())
    return {"acc": k / n if n else None, "correct": k, "n": n, "ci95": wilson_interval(k, n)}


def eps_grid(values: Sequence[float] | str) -> list[float]:
    """Parse ``0,0.02,0.05`` (or a list) into sorted, distinct epsilons >= 0."""
    if isinstance(values, str):
        try:
            values = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise UsageError(
                f"--eps-curve expects comma-separated numbers such as 0,0.02,0.05, got {values!r}"
            ) from None
    grid = sorted({float(v) for v in values})
    if not grid or grid[0] < 0 or not all(math.isfinite(v) for v in grid):
        raise UsageError(f"eps-curve values must be finite numbers >= 0, got {list(values)}")
    return grid


def eps_curve_flags(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, grid: Sequence[float], batch: int = 0
) -> list[torch.Tensor]:
    """Robust flags of one batch at each epsilon of the sorted ``grid``, monotone by construction.

    An example that fools the model inside a small ball also lies inside every larger ball, so a sample
    found non-robust at one epsilon stays non-robust at larger ones: the curve never goes up.
    """
    flags: list[torch.Tensor] = []
    previous = (predict(model, x).argmax(1) == y).cpu()
    for eps in grid:
        robust = run_attack(model, x, y, AttackSpec(**{**asdict(spec), "eps": eps}), batch).robust
        previous = previous & robust
        flags.append(previous)
    return flags
