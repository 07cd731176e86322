"""Attacks on a torch model, images in [0, 1]: the training attacks PGD and FGSM (here), and the evaluation
attacks (``suite``: PGD with per-batch seeds, AutoAttack and Square through ``autoattack``, the official code).
Each runs the model in :func:`akd_edge.models.mode.eval_mode`, which gives back every submodule's mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from akd_edge.attacks.fgsm import fgsm
from akd_edge.attacks.pgd import LossFn, check_unit_range, pgd

if TYPE_CHECKING:
    from akd_edge.config import AttackConfig

__all__ = ["TrainingAttack", "build_attack", "check_unit_range", "fgsm", "pgd"]


@dataclass(frozen=True)
class TrainingAttack:
    """``attack(model, x, y, loss_fn=None) -> x_adv`` for one :class:`AttackConfig` (pgd or fgsm)."""

    cfg: AttackConfig
    check_range: bool = True
    """Check per call that inputs are in [0, 1]; False where the dataset was checked once (no host sync)."""

    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None
    ) -> torch.Tensor:
        cfg = self.cfg
        common = {
            "eps": cfg.eps,
            "step_size": cfg.resolved_step_size,
            "norm": cfg.norm,
            "random_start": cfg.random_start,
            "loss_fn": loss_fn,
            "check_range": self.check_range,
        }
        if cfg.name == "fgsm":
            return fgsm(model, x, y, **common)
        return pgd(model, x, y, steps=cfg.steps, **common)


def build_attack(cfg: AttackConfig, *, check_range: bool = True) -> TrainingAttack | None:
    """The training attack a config describes, or None for ``name = "none"`` (clean training).

    ``check_range=False`` for batches whose [0, 1] range is guaranteed where the data is loaded.
    """
    if cfg.name == "none":
        return None
    if cfg.name not in ("pgd", "fgsm"):
        raise ValueError(f"unknown training attack {cfg.name!r}; use pgd, fgsm or none")
    return TrainingAttack(cfg, check_range=check_range)
