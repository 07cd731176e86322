"""FGSM with a random start (Wong et al. 2020, "Fast is better than free"): one large PGD step."""

from __future__ import annotations

import torch
from torch import nn

from akd_edge.attacks.pgd import LossFn, pgd


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    step_size: float | None = None,
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: LossFn | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """One gradient step of ``step_size`` (default ``1.25 * eps``, as Wong et al.) from a random start.

    The random start and the step larger than eps are what keep FGSM training from catastrophic
    overfitting; the result is projected back onto the eps-ball and [0, 1] like PGD's. ``check_range`` as
    in :func:`pgd`.
    """
    step = 1.25 * eps if step_size is None else step_size
    return pgd(
        model,
        x,
        y,
        eps=eps,
        steps=1,
        step_size=step,
        norm=norm,
        random_start=random_start,
        loss_fn=loss_fn,
        check_range=check_range,
    )
