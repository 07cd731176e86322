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
    """One of onecycle, cosine, multistep or constant over ``total_steps`` batches."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":
        return sched.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=max(total_steps, 2), cycle_momentum=False)
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    if cfg.schedule == "multistep":
        milestones = sorted(max(1, round(m * total_steps)) for m in cfg.milestones)  # duplicates decay twice
        return sched.MultiStepLR(optimizer, milestones=milestones, gamma=cfg.gamma)
    return sched.ConstantLR(optimizer, factor=1.0, total_iters=0)
