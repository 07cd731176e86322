"""AdaAD, IAD and SAAD-style distillation: losses against hand-computed values on a two-sample batch, and
one training step of each through the loop with a frozen BatchNorm teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.attacks import build_attack
from akd_edge.config import AttackConfig, MethodConfig, load_recipe
from akd_edge.core.errors import ConfigError
from akd_edge.methods import METHODS, create_task
from akd_edge.methods.adaad import StudentWithTeacher, teacher_student_kl
from akd_edge.methods.saad import transfer_weights
from akd_edge.models import create_model
from akd_edge.teachers import TeacherEnsemble
from akd_edge.train.loop import Trainer, train_run

NEW_METHODS = ("adaad", "iad", "saad")

X = torch.tensor([[[[0.1, 0.9], [0.4, 0.3]]], [[[0.8, 0.2], [0.5, 0.6]]]])
X_ADV = torch.tensor([[[[0.2, 0.7], [0.5, 0.2]]], [[[0.6, 0.3], [0.4, 0.8]]]])
Y = torch.tensor([2, 0])
W_TEACHER = torch.tensor([[2.0, -1.0, 0.5, 0.0], [-1.0, 1.5, 0.0, 1.0], [0.3, 0.3, -2.0, 0.7]])


def student() -> nn.Module:
    """A fixed linear student on 1x2x2 images, 3 classes (no BatchNorm: train and eval agree)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


class StubTeacher(nn.Module):
    """Known probabilities softmax(W x / t), differentiable in x; weights require grad so a leak would show."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(W_TEACHER.clone())

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return torch.softmax(F.adaptive_avg_pool2d(x, 2).flatten(1) @ self.w.T / temperature, dim=1)


class StubAttack:
    """Returns a fixed adversarial batch and records the model and loss it was asked to attack."""

    def __init__(self, x_adv: torch.Tensor) -> None:
        self.x_adv = x_adv
        self.calls: list[tuple[nn.Module, object]] = []

    def __call__(self, model, x, y, loss_fn=None):
        self.calls.append((model, loss_fn))
        return self.x_adv


def run(name: str, progress: float | None = None, **cfg) -> tuple[dict, nn.Module, StubTeacher, StubAttack]:
    model, teacher, attack = student(), StubTeacher(), StubAttack(X_ADV)
    model.train()
    task = create_task(MethodConfig(name=name, **cfg), model, attack, teacher)
    if progress is not None:
        task.set_progress(progress)
    return task(X, Y), model, teacher, attack


def log_probs(model: nn.Module, x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(model(x) / t, dim=1)


def kl_each(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each sample, summed over classes."""
    return (p * (p.log() - log_q)).sum(1)


def ce(log_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -log_q[torch.arange(len(y)), y].mean()


def test_registry_and_torch_free_names() -> None:
    from akd_edge.core.registry import BUILTIN_NAMES

    assert set(NEW_METHODS) <= set(METHODS.names()) and list(BUILTIN_NAMES["method"]) == METHODS.names()
    assert all(METHODS.get(name).needs_teacher for name in NEW_METHODS)
    assert [name for name in METHODS if METHODS.get(name).teacher_needs_grad] == ["adaad"]
    assert not any(METHODS.get(name).teacher_sees_clean(MethodConfig(name=name)) for name in NEW_METHODS)


@pytest.mark.parametrize(
    "field,value",
    [
        ("adaad_alpha", 1.5),
        ("iad_beta", -0.1),
        ("iad_beta", float("inf")),
        ("iad_warmup", 2.0),
        ("saad_weight", "margin"),
    ],
)
def test_new_fields_are_validated(field, value) -> None:
    with pytest.raises(ConfigError, match=f"method.{field}"):
        MethodConfig(**{field: value})


# -- AdaAD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [1.0, 0.6, 0.0])
def test_adaad_loss(weight) -> None:
    out, model, teacher, _ = run("adaad", adaad_alpha=weight)
    with torch.no_grad():
        adv = kl_each(teacher.probs(X_ADV), log_probs(model, X_ADV)).mean()
        clean = kl_each(teacher.probs(X), log_probs(model, X)).mean()
    assert out["loss"].item() == pytest.approx((weight * adv + (1 - weight) * clean).item(), rel=1e-6)
    assert torch.equal(out["x_adv"], X_ADV) and torch.allclose(out["logits"], model(X_ADV))
    assert ("clean_logits" in out) == (weight < 1)


def test_adaad_attack_objective_puts_teacher_and_student_on_the_same_input() -> None:
    out, model, teacher, attack = run("adaad")
    ((attacked, loss_fn),) = attack.calls
    assert isinstance(attacked, StudentWithTeacher) and attacked.student is model and loss_fn is teacher_student_kl
    x = X_ADV.clone().requires_grad_(True)
    value = loss_fn(attacked(x), Y)
    expected = kl_each(teacher.probs(x), log_probs(model, x)).sum()  # summed, as the authors' inner loss
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    (grad,) = torch.autograd.grad(value, x)
    (grad_expected,) = torch.autograd.grad(expected, x)
    assert torch.allclose(grad, grad_expected, atol=1e-6)
    x2 = X_ADV.clone().requires_grad_(True)
    frozen_teacher = kl_each(teacher.probs(x2).detach(), log_probs(model, x2)).sum()
    (grad_student_only,) = torch.autograd.grad(frozen_teacher, x2)
    assert not torch.allclose(grad, grad_student_only, atol=1e-4)  # the teacher's input gradient steers x'
    assert teacher.w.grad is None


def test_adaad_needs_a_teacher_with_autograd() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    ensemble = TeacherEnsemble([net])  # runs under inference_mode by default
    attack = build_attack(AttackConfig(eps=0.1, steps=2))
    task = create_task(MethodConfig(name="adaad"), student(), attack, ensemble)
    with pytest.raises(RuntimeError, match="needs_grad=True"):
        task(X, Y)
    ensemble.configure(needs_grad=True)
    out = task(X, Y)
    out["loss"].backward()
    assert all(p.grad is None for p in net.parameters())


# -- IAD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,t,beta", [(1.0, 1.0, 0.1), (0.7, 2.0, 0.5)])
def test_iad_loss_before_and_after_warmup(alpha, t, beta) -> None:
    cfg = {"alpha": alpha, "temperature": t, "iad_beta": beta, "iad_warmup": 0.3}
    before, model, teacher, attack = run("iad", progress=0.2, **cfg)
    after = run("iad", progress=0.3, **cfg)[0]
    with torch.no_grad():
        distill = alpha * t * t * kl_each(teacher.probs(X, t), log_probs(model, X_ADV, t)).mean()  # teacher on x
        label = (1 - alpha) * ce(log_probs(model, X), Y)
        trust = teacher.probs(X_ADV)[torch.arange(2), Y] ** beta  # teacher's true-class probability on x'
        own = kl_each(log_probs(model, X).exp(), log_probs(model, X_ADV))
        introspection = alpha * ((1 - trust) * own).mean()
    assert before["loss"].item() == pytest.approx((distill + label).item(), rel=1e-6)
    assert after["loss"].item() == pytest.approx((distill + introspection + label).item(), rel=1e-6)
    assert after["loss"].item() != pytest.approx(before["loss"].item(), rel=1e-6)  # the introspection term counts
    assert attack.calls[0][1] is None  # PGD on the student's cross-entropy
    assert torch.allclose(after["clean_logits"], model(X))


def test_iad_hand_numbers_of_the_trust_weights() -> None:
    """p_T(y|x') for the stub teacher, computed from its weights by hand."""
    with torch.no_grad():
        z = X_ADV.flatten(1) @ W_TEACHER.T
        p = z.exp() / z.exp().sum(1, keepdim=True)
    expected = torch.tensor([p[0, 2], p[1, 0]])
    assert torch.allclose(StubTeacher().probs(X_ADV)[torch.arange(2), Y].detach(), expected, atol=1e-7)


def test_iad_with_full_trust_is_ard() -> None:
    iad = run("iad", progress=1.0, alpha=0.8, temperature=2.0, iad_beta=0.0)[0]["loss"].item()
    ard = run("ard", alpha=0.8, temperature=2.0)[0]["loss"].item()
    assert iad == pytest.approx(ard, rel=1e-6)


def test_progress_is_checked() -> None:
    task = create_task(MethodConfig(name="iad"), student(), None, StubTeacher())
    assert task.progress == 0.0
    with pytest.raises(ValueError, match="progress"):
        task.set_progress(1.5)


# -- SAAD-style ----------------------------------------------------------------------------------


def test_transfer_weights_by_hand() -> None:
    weights = transfer_weights(torch.tensor([1.0, 2.0, 4.0]))  # shifted 0, 1, 3; mean 4/3
    assert torch.allclose(weights, torch.tensor([0.0, 0.75, 2.25]))
    assert torch.equal(transfer_weights(torch.tensor([0.5, 0.5])), torch.ones(2))


@pytest.mark.parametrize("mode", ["entropy", "loss"])
def test_saad_loss_and_attack_objective(mode) -> None:
    out, model, teacher, attack = run("saad", saad_weight=mode)
    with torch.no_grad():
        p_adv = teacher.probs(X_ADV)
        scores = -(p_adv * p_adv.log()).sum(1) if mode == "entropy" else -p_adv[torch.arange(2), Y].log()
        shifted = scores - scores.min()
        weights = shifted / shifted.mean()  # two samples: 0 and 2
        expected = (weights * kl_each(p_adv, log_probs(model, X_ADV))).mean()
        assert torch.allclose(out["weights"], weights) and out["weights"].mean().item() == pytest.approx(1.0)
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
        value = attack.calls[0][1](logits, Y)  # RSLAD's attack: KL(T(x) || S(x'))
        assert value.item() == pytest.approx(kl_each(teacher.probs(X), torch.log_softmax(logits, 1)).mean().item())
    assert not out["weights"].requires_grad


# -- all three -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_METHODS)
def test_one_real_step_leaves_the_teacher_alone(name) -> None:
    """Real PGD, a BatchNorm student: finite loss, x' in the ball, student trains, teacher gets no grad."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )
    model.train()
    teacher = StubTeacher()
    task = create_task(MethodConfig(name=name), model, build_attack(AttackConfig(eps=0.1, steps=3)), teacher)
    task.set_progress(1.0)
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    out = task(x, y)
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    assert 0 < (out["x_adv"] - x).abs().max().item() <= 0.1 + 1e-6
    assert all(m.training for m in model.modules())
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert teacher.w.grad is None


SYNTH = "n=256,test=64,shape=1x8x8,classes=3"


def recipe(method: str, fast_teacher: bool) -> dict:
    return {
        "run": {"name": method, "seed": 3, "device": "cpu"},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 64, "batch_size": 192, "eval_batch_size": 64},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": method, "iad_warmup": 0.0},
        "train": {
            "epochs": 1,
            "keep_epoch_checkpoints": False,
            "fast_teacher": fast_teacher,
            "attack": {"eps": 0.1, "steps": 2},
        },
        "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
    }


def bn_teacher() -> nn.Module:
    """A BatchNorm CNN teacher in eval mode whose running statistics are not the defaults."""
    torch.manual_seed(1)
    teacher = create_model("cnn-student", num_classes=3, input_shape=(1, 8, 8), width=0.5)
    for module in teacher.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return teacher.eval()


@pytest.mark.parametrize("fast_teacher", [True, False])
@pytest.mark.parametrize("name", NEW_METHODS)
def test_one_step_through_train_run(tmp_path: Path, name: str, fast_teacher: bool) -> None:
    teacher = bn_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    summary = train_run(load_recipe(recipe(name, fast_teacher)), tmp_path / "run", teacher=teacher)
    assert summary["epochs"] == 1
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    (epoch,) = [record for record in map(json.loads, lines) if record["event"] == "epoch"]
    assert math.isfinite(epoch["loss"]) and epoch["loss"] > 0
    assert all(p.grad is None for p in teacher.parameters())
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics and weights unchanged
    assert not teacher.training


@pytest.mark.parametrize("fast_teacher", [True, False])
def test_loop_runs_adaad_teacher_with_autograd_only(tmp_path: Path, fast_teacher: bool) -> None:
    for name, wanted in (("adaad", True), ("iad", False)):
        trainer = Trainer(
            load_recipe(recipe(name, fast_teacher)),
            tmp_path / name / str(fast_teacher),
            "student",
            teacher=bn_teacher(),
        )
        trainer.prepare()
        assert trainer.teacher.needs_grad is wanted
        assert not any(p.requires_grad for p in trainer.teacher.parameters())


def test_each_objective_is_one_file_named_after_it() -> None:
    """Adding an objective is adding ``akd_edge/methods/NAME.py``: found by its file name, registered under it."""
    from akd_edge.core.registry import method_files

    assert set(method_files()) == set(METHODS.names())
    for name in method_files():
        assert METHODS.get(name).__module__ == f"akd_edge.methods.{name}"


def test_contributing_objective_example_is_one_file(tmp_path):
    """CONTRIBUTING.md's worked objective, added as one file to a copy of the package: recipes accept it without
    torch, ``akd-edge methods`` lists it and its loss runs, with no other file edited."""
    import textwrap

    from conftest import run_with_contributing_example

    check = textwrap.dedent(
        """
        import sys
        from akd_edge.core.registry import BUILTIN_NAMES, validate_names
        from akd_edge.config import MethodConfig, load_recipe
        assert "mart" in BUILTIN_NAMES["method"] and "torch" not in sys.modules
        validate_names(load_recipe("fmnist-quickstart", ["method.name=mart"]))
        import torch
        from akd_edge.methods import create_task
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        attack = lambda m, x, y, **kw: (x + 0.01).clamp(0, 1)
        task = create_task(MethodConfig(name="mart"), model, attack)
        out = task(torch.rand(2, 1, 2, 2), torch.tensor([0, 2]))
        out["loss"].backward()
        print(bool(torch.isfinite(out["loss"])), model[1].weight.grad is not None)
        """
    )
    done, listed = run_with_contributing_example(tmp_path, "akd_edge/methods/mart.py", check, "methods")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"]
    assert listed.returncode == 0 and "mart" in listed.stdout, listed.stderr
