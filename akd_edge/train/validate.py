"""Validation used for early stopping: clean and PGD accuracy on a fixed validation subset, after every epoch
(the best epoch by robust accuracy is kept as best.pt)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from akd_edge.attacks.suite import ConfigAttack
from akd_edge.config import AttackConfig, EvalConfig
from akd_edge.data import ImageDataset
from akd_edge.evaluation.engine import evaluate_dataset, sharded

if TYPE_CHECKING:
    from akd_edge.core.distributed import Group


def validate(
    model: nn.Module,
    dataset: ImageDataset,
    attack_cfg: AttackConfig,
    *,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    group: Group | None = None,
) -> dict[str, float]:
    """Clean and robust accuracy of ``model`` on ``dataset`` (the threat model of ``attack_cfg``).

    The attack's random starts come from the global RNG, as training's do; an empty dataset scores 0. With a
    ``group`` (a data-parallel run) the ranks share the images, in batches small enough that each rank gets
    some, and every rank returns the same numbers.
    """
    if len(dataset) == 0:
        return {"clean_acc": 0.0, "robust_acc": 0.0, "n": 0}
    if group is not None and group.world > 1:
        batch_size = max(1, math.ceil(min(batch_size, len(dataset)) / group.world))
    attack = ConfigAttack(attack_cfg)
    with sharded(group):
        run = evaluate_dataset(
            model, dataset, [attack], batch_size=batch_size, device=device, calibration=False, checks=False
        )
    return {"clean_acc": run.acc("clean"), "robust_acc": run.acc(attack.name), "n": run.results["clean"]["n"]}


def validate_epoch(
    model: nn.Module,
    val_set: ImageDataset,
    cfg: EvalConfig,
    *,
    batch_size: int,
    device: torch.device,
    group: Group | None = None,
) -> tuple[dict[str, float], float]:
    """The check after each training epoch: :func:`validate` on the first ``cfg.val_samples`` validation images
    (all of them when 0); returns the metrics and the seconds it took."""
    if cfg.val_samples and len(val_set) > cfg.val_samples:
        val_set = val_set.subset(np.arange(cfg.val_samples))
    t0 = time.perf_counter()
    val = validate(model, val_set, cfg.attack, batch_size=batch_size, device=device, group=group)
    return val, time.perf_counter() - t0
