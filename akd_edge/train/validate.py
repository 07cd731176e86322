"""Validation used for early stopping: clean and PGD accuracy on a fixed validation subset."""

from __future__ import annotations

import torch
from torch import nn

from akd_edge.attacks import build_attack, eval_mode
from akd_edge.config import AttackConfig
from akd_edge.data import ImageDataset, iterate_batches


def validate(
    model: nn.Module,
    dataset: ImageDataset,
    attack_cfg: AttackConfig,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Clean and robust accuracy of ``model`` on ``dataset`` (the threat model of ``attack_cfg``)."""
    attack = build_attack(attack_cfg)
    correct_clean = correct_adv = total = 0
    with eval_mode(model):
        for x, y, _ in iterate_batches(dataset, batch_size, device=device):
            with torch.no_grad():
                correct_clean += (model(x).argmax(1) == y).sum().item()
            x_adv = attack(model, x, y) if attack is not None else x
            with torch.no_grad():
                correct_adv += (model(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    total = max(total, 1)
    return {"clean_acc": correct_clean / total, "robust_acc": correct_adv / total, "n": total}
