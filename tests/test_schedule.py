"""Learning-rate schedules against their formulas, and the SGD optimiser as the recipe configures it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from akd_edge.config import OptimConfig, load_recipe
from akd_edge.core.errors import ConfigError
from akd_edge.train.loop import Callbacks, train_run
from akd_edge.train.schedule import build_optimizer, build_scheduler

SYNTH = "n=256,test=64,shape=1x8x8,classes=3"
LR = 0.1
TOTAL = 100


def lrs(cfg: OptimConfig, total_steps: int = TOTAL) -> list[float]:
    """The rate of each of the ``total_steps`` batches (batch t trains after t scheduler steps)."""
    optimizer = build_optimizer(nn.Linear(2, 2), cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        assert all(group["lr"] == rates[-1] for group in optimizer.param_groups)  # decay and no-decay groups agree
        optimizer.step()
        scheduler.step()
    return rates


def cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def test_onecycle_warms_up_to_the_peak_then_anneals_to_almost_zero() -> None:
    """torch's OneCycleLR defaults: start at lr/25, peak at 30% of the steps, end at lr/25/1e4, cosine both ways."""
    rates = lrs(OptimConfig(lr=LR, schedule="onecycle"))
    start, peak_step, low = LR / 25, 0.3 * TOTAL - 1, LR / 25 / 1e4
    assert rates[0] == pytest.approx(0.004)
    assert rates[15] == pytest.approx(cos_anneal(start, LR, 15 / peak_step))  # mid warm-up
    assert rates[29] == pytest.approx(LR)  # end of the warm-up: the peak, lr itself
    assert max(rates) == pytest.approx(LR) and rates.index(max(rates)) == 29
    assert rates[64] == pytest.approx(cos_anneal(LR, low, (64 - 29) / (99 - 29)))  # half-way down: ~lr/2
    assert rates[64] == pytest.approx((LR + low) / 2)
    assert rates[-1] == pytest.approx(4e-7)  # the last batch trains at the floor
    assert all(a < b for a, b in zip(rates[:29], rates[1:30], strict=True))
    assert all(a > b for a, b in zip(rates[29:-1], rates[30:], strict=True))


def test_cosine_starts_at_lr_and_decays_to_zero_without_warmup() -> None:
    rates = lrs(OptimConfig(lr=LR, schedule="cosine"))
    for t in (0, 25, 50, 75, 99):
        assert rates[t] == pytest.approx(LR * (1 + math.cos(math.pi * t / TOTAL)) / 2, rel=1e-6), t
    assert rates[0] == pytest.approx(LR) and rates[50] == pytest.approx(LR / 2)
    assert rates[-1] == pytest.approx(LR * (1 + math.cos(math.pi * 0.99)) / 2) and rates[-1] < 1e-4


def test_multistep_multiplies_by_gamma_at_each_milestone_fraction() -> None:
    rates = lrs(OptimConfig(lr=LR, schedule="multistep", milestones=[0.5, 0.75], gamma=0.2))
    assert rates[0] == rates[49] == pytest.approx(0.1)
    assert rates[50] == rates[74] == pytest.approx(0.02)
    assert rates[75] == rates[99] == pytest.approx(0.004)


def test_multistep_applies_every_milestone_even_in_a_short_run() -> None:
    """3 steps, milestones 0.5 and 0.75 both round to step 2: the last batch should train at lr * gamma^2."""
    rates = lrs(OptimConfig(lr=LR, schedule="multistep", milestones=[0.5, 0.75], gamma=0.1), total_steps=3)
    assert rates == pytest.approx([0.1, 0.1, 0.001])


def test_constant_never_changes() -> None:
    assert lrs(OptimConfig(lr=0.03, schedule="constant")) == [0.03] * TOTAL


def test_the_loop_steps_the_schedule_once_per_batch_over_the_whole_run(tmp_path: Path) -> None:
    """2 epochs of 5 batches: the rate the loop reports after batch t is the onecycle rate at step t."""

    class Rates(Callbacks):
        def __init__(self) -> None:
            self.rates: list[float] = []

        def on_batch(self, batch: int, stats: dict[str, float]) -> None:
            self.rates.append(stats["lr"])

    recipe = load_recipe(
        {
            "run": {"name": "lr", "seed": 0},
            "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 96, "batch_size": 32},
            "model": {"name": "cnn-student", "kwargs": {"width": 0.25}},
            "train": {"epochs": 2, "keep_epoch_checkpoints": False, "attack": {"name": "none"}},
            "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
        },
        ["train.optim.lr=0.2"],
    )
    seen = Rates()
    train_run(recipe, tmp_path / "run", callbacks=seen)
    assert len(seen.rates) == 10
    expected = lrs(OptimConfig(lr=0.2, schedule="onecycle"), total_steps=10)[1:]
    assert seen.rates[:9] == pytest.approx(expected)
    assert seen.rates[1] == pytest.approx(0.2)  # the peak at 30% of the whole run (step 2), not of one epoch


def model_with_norm() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter is left out of the optimiser
    return model


def test_optimizer_decays_only_weight_matrices_and_uses_the_configured_momentum() -> None:
    model = model_with_norm()
    optimizer = build_optimizer(model, OptimConfig(lr=0.5, momentum=0.8, nesterov=True, weight_decay=0.01))
    assert isinstance(optimizer, torch.optim.SGD)
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in decay["params"]) == ["0.weight", "3.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["1.bias", "1.weight", "3.bias"]
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    for group in optimizer.param_groups:
        assert group["lr"] == 0.5 and group["momentum"] == 0.8 and group["nesterov"] is True

    # One step with zero loss gradients: the gradient is wd * w, and nesterov applies it (1 + momentum) times
    # on the first step; decayed weights shrink by lr * wd * (1 + m), everything else stays put.
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    params = dict(model.named_parameters())
    for name in ("0.weight", "3.weight"):
        assert torch.allclose(params[name], before[name] * (1 - 0.5 * 0.01 * 1.8)), name
    for name in ("0.bias", "1.weight", "1.bias", "3.bias"):
        assert torch.equal(params[name], before[name]), name


def test_nesterov_is_off_without_momentum_and_when_asked() -> None:
    plain = build_optimizer(nn.Linear(2, 2), OptimConfig(momentum=0.0, nesterov=True))
    assert all(g["momentum"] == 0.0 and g["nesterov"] is False for g in plain.param_groups)
    heavy_ball = build_optimizer(nn.Linear(2, 2), OptimConfig(momentum=0.9, nesterov=False))
    assert all(g["momentum"] == 0.9 and g["nesterov"] is False for g in heavy_ball.param_groups)


def test_sgd_update_matches_the_nesterov_formula() -> None:
    """Two steps with a constant gradient g: v1 = g, v2 = m g + g; nesterov applies g + m v."""
    layer = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    optimizer = build_optimizer(layer, OptimConfig(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.0))
    layer.weight.grad = torch.full_like(layer.weight, 2.0)
    optimizer.step()  # v = 2, update = 2 + 0.5 * 2 = 3
    assert layer.weight.item() == pytest.approx(1.0 - 0.1 * 3.0)
    optimizer.step()  # v = 0.5 * 2 + 2 = 3, update = 2 + 0.5 * 3 = 3.5
    assert layer.weight.item() == pytest.approx(0.7 - 0.1 * 3.5)


@pytest.mark.parametrize("schedule", ["cosine", "multistep", "constant"])
def test_warmup_rises_linearly_from_a_tenth_to_the_peak_then_runs_the_schedule(schedule: str) -> None:
    """optim.warmup = 0.1: 10 batches from lr/10 up to lr, then the schedule over the remaining 90 batches."""
    rates = lrs(OptimConfig(lr=LR, schedule=schedule, warmup=0.1))
    for t in range(10):
        assert rates[t] == pytest.approx(LR * (0.1 + 0.9 * t / 10)), t
    assert rates[10] == pytest.approx(LR)
    plain = lrs(OptimConfig(lr=LR, schedule=schedule), total_steps=90)
    if schedule == "multistep":  # milestones stay fractions of the whole run: 50 and 75 of 100 batches
        assert rates[49] == pytest.approx(LR) and rates[50] == pytest.approx(LR * 0.1)
        assert rates[74] == pytest.approx(LR * 0.1) and rates[75] == pytest.approx(LR * 0.01)
    else:
        assert rates[10:] == pytest.approx(plain, rel=1e-6)


def test_warmup_is_refused_with_onecycle_and_outside_its_range() -> None:
    with pytest.raises(ConfigError, match="optim.warmup"):
        OptimConfig(schedule="onecycle", warmup=0.1)
    with pytest.raises(ConfigError, match="optim.warmup"):
        OptimConfig(schedule="cosine", warmup=1.0)
