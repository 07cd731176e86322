"""Validation used for early stopping: clean and PGD accuracy on a fixed validation subset."""

from __future__ import annotations

import torch
from torch import nn

from akd_edge.config import AttackConfig
from akd_edge.data import ImageDataset
from akd_edge.evaluation.engine import evaluate_dataset
from akd_edge.metrics.robust import ConfigAttack


def validate(
    model: nn.Module,
    dataset: ImageDataset,
    attack_cfg: AttackConfig,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Clean and robust accuracy of ``model`` on ``dataset`` (the threat model of ``attack_cfg``).

    The attack's random starts come from the global RNG, as training's do; an empty dataset scores 0.
    """
    if len(dataset) == 0:
        return {"clean_acc": 0.0, "robust_acc": 0.0, "n": 0}
    attack = ConfigAttack(attack_cfg)
    run = evaluate_dataset(
        model, dataset, [attack], batch_size=batch_size, device=device, calibration=False, checks=False
    )
    return {"clean_acc": run.acc("clean"), "robust_acc": run.acc(attack.name), "n": run.results["clean"]["n"]}
