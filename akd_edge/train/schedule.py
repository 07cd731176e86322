"""Optimiser and learning-rate schedules, stepped once per batch."""

from __future__ import annotations

import torch
from torch import nn

from akd_edge.config import OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD with momentum; no weight decay on biases and normalisation parameters (1-d tensors)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One of onecycle, cosine, multistep or constant over ``total_steps`` batches.

    With ``cfg.warmup`` > 0 the first ``warmup * total_steps`` batches rise linearly from ``lr / 10`` to ``lr``
    and the schedule proper runs over the remaining batches (milestones stay fractions of the whole run).
    """
    sched = torch.optim.lr_scheduler
    warm = round(cfg.warmup * total_steps) if cfg.schedule != "onecycle" else 0
    if warm < 1:
        return _main_schedule(optimizer, cfg, total_steps, 0)
    ramp = sched.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warm)
    main = _main_schedule(optimizer, cfg, total_steps, warm)
    return sched.SequentialLR(optimizer, schedulers=[ramp, main], milestones=[warm])


def _main_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int, warm: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule after ``warm`` warm-up batches (``warm`` = 0: the whole run)."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 2), cycle_momentum=False)
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(total_steps - warm, 1))
    if cfg.schedule == "multistep":
        # duplicates decay twice; a milestone inside the warm-up fires on its first batch after it
        milestones = sorted(max(1, round(m * total_steps) - warm) for m in cfg.milestones)
        return sched.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
