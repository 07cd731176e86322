"""Each training objective against its loss computed by hand on a two-sample batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.attacks import build_attack
from akd_edge.config import AttackConfig, MethodConfig, Recipe
from akd_edge.core.errors import UsageError
from akd_edge.methods import METHODS, MissingTeacherError, create_task

TEACHER_METHODS = ("ard", "rslad", "akd")


def student() -> nn.Module:
    """A fixed linear student on 1x2x2 images, 3 classes (no BatchNorm: train and eval agree)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


class StubTeacher(nn.Module):
    """Known probabilities softmax(W x / t); its weights require grad so a leak into them would show."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[2.0, -1.0, 0.5, 0.0], [-1.0, 1.5, 0.0, 1.0], [0.3, 0.3, -2.0, 0.7]]))

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return torch.softmax(x.flatten(1) @ self.w.T / temperature, dim=1)


class PooledTeacher(StubTeacher):
    """The stub teacher on 6x6 images: average-pool to 2x2 first."""

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return super().probs(F.adaptive_avg_pool2d(x, 2), temperature)


class StubAttack:
    """Returns a fixed adversarial batch and records the loss it was asked to maximise."""

    def __init__(self, x_adv: torch.Tensor) -> None:
        self.x_adv = x_adv
        self.loss_fns: list = []

    def __call__(self, model, x, y, loss_fn=None):
        self.loss_fns.append(loss_fn)
        return self.x_adv


X = torch.tensor([[[[0.1, 0.9], [0.4, 0.3]]], [[[0.8, 0.2], [0.5, 0.6]]]])
X_ADV = torch.tensor([[[[0.2, 0.7], [0.5, 0.2]]], [[[0.6, 0.3], [0.4, 0.8]]]])
Y = torch.tensor([2, 0])


def run(name: str, **cfg) -> tuple[dict, nn.Module, StubTeacher, StubAttack]:
    model, teacher, attack = student(), StubTeacher(), StubAttack(X_ADV)
    model.train()
    task = create_task(MethodConfig(name=name, **cfg), model, attack, teacher)
    return task(X, Y), model, teacher, attack


def log_probs(model: nn.Module, x: torch.Tensor, t: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(model(x) / t, dim=1)


def kl(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of each sample, summed over classes, then averaged over the batch."""
    return (p * (p.log() - log_q)).sum(1).mean()


def ce(log_q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -log_q[torch.arange(len(y)), y].mean()


def test_registry_lists_the_methods() -> None:
    assert METHODS.names() == ["adaad", "akd", "ard", "at", "iad", "rslad", "saad", "trades"]
    assert {name for name in METHODS if METHODS.get(name).needs_teacher} == {*TEACHER_METHODS, "adaad", "iad", "saad"}
    Recipe(method=MethodConfig(name="trades"))  # config validates names against the registry


def test_at_loss() -> None:
    out, model, _, attack = run("at")
    with torch.no_grad():
        expected = ce(log_probs(model, X_ADV), Y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(out["x_adv"], X_ADV)
    assert torch.allclose(out["logits"], model(X_ADV)) and not out["logits"].requires_grad
    assert attack.loss_fns == [None]  # PGD on the student's cross-entropy


def test_trades_loss_and_attack_objective() -> None:
    out, model, _, attack = run("trades", beta=3.0)
    with torch.no_grad():
        p_clean = log_probs(model, X).exp()
        expected = ce(log_probs(model, X), Y) + 3.0 * kl(p_clean, log_probs(model, X_ADV))
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        # the attack maximises KL(S(x) || S(x')) with S(x) fixed
        logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
        value = attack.loss_fns[0](logits, Y)
        assert value.item() == pytest.approx(kl(p_clean, torch.log_softmax(logits, 1)).item(), rel=1e-6)
        assert attack.loss_fns[0](model(X), Y).abs().item() < 1e-6  # zero at x' = x


def test_trades_gradient_flows_through_both_terms() -> None:
    """With beta only, the loss still depends on S(x) through the KL's first argument (as the paper's code)."""
    out, model, _, _ = run("trades", beta=1.0)
    grad_total = torch.autograd.grad(out["loss"], model[1].weight)[0]
    natural = F.cross_entropy(model(X), Y)
    grad_natural = torch.autograd.grad(natural, model[1].weight)[0]
    p_clean = torch.softmax(model(X), 1)
    robust = kl(p_clean, log_probs(model, X_ADV))
    grad_robust = torch.autograd.grad(robust, model[1].weight)[0]
    assert torch.allclose(grad_total, grad_natural + grad_robust, atol=1e-6)


@pytest.mark.parametrize("alpha,t", [(0.9, 1.0), (0.5, 4.0), (1.0, 2.0)])
def test_ard_loss(alpha, t) -> None:
    out, model, teacher, attack = run("ard", alpha=alpha, temperature=t)
    with torch.no_grad():
        p_teacher = teacher.probs(X, t)  # the teacher sees the clean batch
        expected = alpha * t * t * kl(p_teacher, log_probs(model, X_ADV, t)) + (1 - alpha) * ce(log_probs(model, X), Y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert attack.loss_fns == [None]  # x' from PGD on the student's cross-entropy


def test_rslad_loss_and_attack_objective() -> None:
    out, model, teacher, attack = run("rslad", alpha=0.3, temperature=1.0)  # alpha is the paper's fixed 5/6
    with torch.no_grad():
        soft = teacher.probs(X)
        expected = 5 / 6 * kl(soft, log_probs(model, X_ADV)) + 1 / 6 * kl(soft, log_probs(model, X))
        assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
        logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
        value = attack.loss_fns[0](logits, Y)
        assert value.item() == pytest.approx(kl(soft, torch.log_softmax(logits, 1)).item(), rel=1e-6)


@pytest.mark.parametrize("teacher_input", ["adv", "clean"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
def test_akd_loss_is_ce_against_mixed_labels(alpha, teacher_input) -> None:
    out, model, teacher, attack = run("akd", alpha=alpha, temperature=1.0, teacher_input=teacher_input)
    with torch.no_grad():
        p_teacher = teacher.probs(X_ADV if teacher_input == "adv" else X)
        q = alpha * p_teacher + (1 - alpha) * F.one_hot(Y, 3).float()
        expected = -(q * log_probs(model, X_ADV)).sum(1).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert attack.loss_fns == [None]
    assert torch.allclose(out["logits"], model(X_ADV))


def test_akd_limits_and_teacher_input() -> None:
    at_loss = run("at")[0]["loss"].item()
    assert run("akd", alpha=0.0)[0]["loss"].item() == pytest.approx(at_loss, rel=1e-6)
    out, model, teacher, _ = run("akd", alpha=1.0)
    with torch.no_grad():
        pure = -(teacher.probs(X_ADV) * log_probs(model, X_ADV)).sum(1).mean()
    assert out["loss"].item() == pytest.approx(pure.item(), rel=1e-6)
    adv = run("akd", alpha=0.9, teacher_input="adv")[0]["loss"].item()
    clean = run("akd", alpha=0.9, teacher_input="clean")[0]["loss"].item()
    assert abs(adv - clean) > 1e-3


def test_akd_temperature_softens_teacher_and_student() -> None:
    alpha, t = 0.7, 3.0
    out, model, teacher, _ = run("akd", alpha=alpha, temperature=t)
    with torch.no_grad():
        distill = -(teacher.probs(X_ADV, t) * log_probs(model, X_ADV, t)).sum(1).mean()
        expected = alpha * t * t * distill + (1 - alpha) * ce(log_probs(model, X_ADV), Y)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss"].item() != pytest.approx(run("akd", alpha=alpha, temperature=1.0)[0]["loss"].item(), rel=1e-3)


@pytest.mark.parametrize("name", TEACHER_METHODS)
def test_missing_teacher_is_a_clear_error(name) -> None:
    with pytest.raises(ValueError, match=r"teacher.*\[\[teachers\]\]") as info:
        create_task(MethodConfig(name=name), student(), None, teacher=None)
    assert isinstance(info.value, MissingTeacherError) and isinstance(info.value, UsageError)


@pytest.mark.parametrize("name", ["at", "trades", "ard", "rslad", "akd"])
def test_gradients_reach_the_student_only(name) -> None:
    out, model, teacher, _ = run(name)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert teacher.w.grad is None


@pytest.mark.parametrize("name", ["at", "trades", "ard", "rslad", "akd"])
def test_one_real_step_in_train_mode(name) -> None:
    """With the real PGD and a BatchNorm student: finite loss, x' in the ball, train mode kept, weights move."""
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
    attack = build_attack(AttackConfig(eps=0.1, steps=3))
    x, y = torch.rand(8, 1, 6, 6), torch.randint(0, 3, (8,))
    teacher = PooledTeacher() if name in TEACHER_METHODS else None
    task = create_task(MethodConfig(name=name), model, attack, teacher)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    out = task(x, y)
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    assert (out["x_adv"] - x).abs().max().item() <= 0.1 + 1e-6 and (out["x_adv"] - x).abs().max().item() > 0
    assert all(m.training for m in model.modules())
    assert out["logits"].shape == (8, 3)
    out["loss"].backward()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    if teacher is not None:
        assert teacher.w.grad is None


def test_clean_training_without_attack() -> None:
    model = student()
    out = create_task(MethodConfig(name="at"), model, None)(X, Y)
    assert torch.equal(out["x_adv"], X)
    with torch.no_grad():
        assert out["loss"].item() == pytest.approx(ce(log_probs(model, X), Y).item(), rel=1e-6)
