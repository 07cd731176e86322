"""train.optim.grad_clip: with a huge loss, every SGD update the loop applies is bounded by lr * clip norm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from akd_edge.config import load_recipe
from akd_edge.train.loop import Callbacks, train_run

LR, CLIP = 1.0, 0.01


class Scaled(nn.Module):
    """Multiplies the logits by 1e4: the cross-entropy gradient of the linear layer grows 1e4-fold."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 1e4


class UpdateNorms(Callbacks):
    """After each batch, the norm of the change of all parameters since the previous batch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.previous = self._flat()
        self.norms: list[float] = []

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().flatten().clone() for p in self.model.parameters()])

    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        current = self._flat()
        self.norms.append(float((current - self.previous).norm()))
        self.previous = current


def run_with_clip(clip: float, run_dir: Path) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3), Scaled())
    recipe = load_recipe(
        {
            "run": {"name": "clip", "seed": 0, "device": "cpu"},
            "data": {
                "name": "synthetic",
                "data_dir": "n=256,test=64,shape=1x8x8,classes=3",
                "val_size": 64,
                "batch_size": 32,
            },
            "model": {"name": "cnn-student"},
            "method": {"name": "at"},
            "train": {
                "epochs": 1,
                "keep_epoch_checkpoints": False,
                "attack": {"name": "none"},
                "optim": {
                    "lr": LR,
                    "momentum": 0.0,
                    "nesterov": False,
                    "weight_decay": 0.0,
                    "schedule": "constant",
                    "grad_clip": clip,
                },
            },
            "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
        }
    )
    seen = UpdateNorms(model)
    train_run(recipe, run_dir, callbacks=seen, model=model)
    return seen.norms


def test_clipping_bounds_every_update_by_lr_times_the_clip_norm(tmp_path: Path) -> None:
    clipped = run_with_clip(CLIP, tmp_path / "clipped")
    assert len(clipped) == 6  # 192 training images in batches of 32
    # Plain SGD: the update is lr * clipped gradient, whose norm is at most the clip norm ...
    assert max(clipped) <= LR * CLIP * (1 + 1e-4)
    # ... and exactly the clip norm while the huge gradient is being clipped (the first step surely is).
    assert clipped[0] == pytest.approx(LR * CLIP, rel=1e-3)


def test_without_clipping_the_same_run_takes_huge_steps(tmp_path: Path) -> None:
    """The control: the loss is large enough that the clip above really engaged."""
    unclipped = run_with_clip(0.0, tmp_path / "unclipped")
    assert unclipped[0] > 1000 * LR * CLIP
