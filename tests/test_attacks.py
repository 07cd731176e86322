"""Properties of the training attacks: the ball, the box, eps 0, monotone strength, modes restored."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.attacks import TrainingAttack, build_attack, fgsm, pgd
from akd_edge.attacks.pgd import project, random_delta
from akd_edge.config import AttackConfig
from akd_edge.core.errors import DataError, UsageError
from akd_edge.models.mode import eval_mode

ATTACKS = {
    "pgd": lambda model, x, y, eps, norm, **kw: pgd(
        model, x, y, eps=eps, steps=kw.pop("steps", 5), step_size=kw.pop("step_size", eps / 2), norm=norm, **kw
    ),
    "fgsm": lambda model, x, y, eps, norm, **kw: fgsm(model, x, y, eps=eps, norm=norm, **kw),
}


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three classes of 1x6x6 images: a class template plus noise, clipped to [0, 1] (so pixels hit 0 and 1)."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(123))
    y = torch.randint(0, 3, (n,), generator=gen)
    x = (templates[y] + 0.35 * torch.randn(n, 1, 6, 6, generator=gen)).clamp(0, 1)
    return x, y


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(36, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3)
    )


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad(), eval_mode(model):
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny MLP trained (clean) to high accuracy on the synthetic task, and held-out data."""
    torch.manual_seed(0)
    model = make_model()
    x, y = make_data(512, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x_test, y_test = make_data(256, seed=2)
    assert accuracy(model, x_test, y_test) > 0.9  # the properties below need a model that learned something
    return model, x_test, y_test


class Linear(nn.Module):
    """logits[:, 0] = w . x: the input gradient of logits[:, 0].sum() is exactly w."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x * self.w).flatten(1).sum(1, keepdim=True)
        return torch.cat([score, -score], dim=1)


def first_logit(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return logits[:, 0].sum()


@pytest.mark.parametrize("name", ["pgd", "fgsm"])
@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_perturbation_stays_in_ball_and_box(trained, name, norm, eps) -> None:
    model, x, y = trained
    torch.manual_seed(3)
    x_adv = ATTACKS[name](model, x, y, eps, norm)
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert size.max().item() <= eps * (1 + 1e-5)
    assert size.max().item() > 0.5 * eps  # it did move
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert not x_adv.requires_grad and x_adv.grad_fn is None


@pytest.mark.parametrize("name", ["pgd", "fgsm"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_the_input(trained, name, norm) -> None:
    model, x, y = trained
    x_adv = ATTACKS[name](model, x, y, 0.0, norm, step_size=0.1)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.0)])
def test_more_pgd_steps_never_raise_accuracy(trained, norm, eps) -> None:
    model, x, y = trained
    accs = []
    for steps in (1, 2, 4, 8, 16):
        torch.manual_seed(7)  # the same random start for every run
        x_adv = pgd(model, x, y, eps=eps, steps=steps, step_size=eps / 4, norm=norm)
        accs.append(accuracy(model, x_adv, y))
    assert all(later <= earlier for earlier, later in zip(accs, accs[1:], strict=False)), accs
    assert accs[-1] < accs[0]  # the steps matter: the check above is not vacuous


@pytest.mark.parametrize("norm,eps", [("linf", 0.15), ("l2", 1.0)])
def test_pgd_beats_clean_accuracy(trained, norm, eps) -> None:
    model, x, y = trained
    torch.manual_seed(0)
    clean = accuracy(model, x, y)
    robust = accuracy(model, pgd(model, x, y, eps=eps, steps=10, step_size=2.5 * eps / 10, norm=norm), y)
    assert robust < clean - 0.2, (clean, robust)


def test_modes_restored_including_a_mixed_state(trained) -> None:
    model = make_model()
    model.train()
    model[2].eval()  # a frozen BatchNorm inside a training model
    before = [m.training for m in model.modules()]
    seen = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: seen.append(mod.training)) for m in model.modules()]
    _, x, y = trained
    pgd(model, x[:8], y[:8], eps=0.1, steps=2, step_size=0.05)
    for hook in hooks:
        hook.remove()
    assert seen and not any(seen)  # every module ran in eval mode during the attack
    assert [m.training for m in model.modules()] == before


def test_modes_restored_after_an_exception(trained) -> None:
    model = make_model()
    model.train()
    model[4].eval()
    before = [m.training for m in model.modules()]
    _, x, y = trained

    def failing_loss(logits: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        pgd(model, x[:4], y[:4], eps=0.1, steps=1, step_size=0.1, loss_fn=failing_loss)
    assert [m.training for m in model.modules()] == before
    with pytest.raises(KeyError), eval_mode(model):
        assert not any(m.training for m in model.modules())
        raise KeyError("inside")
    assert [m.training for m in model.modules()] == before


def test_parameters_untouched(trained) -> None:
    model = make_model()
    model[1].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    _, x, y = trained
    pgd(model, x[:8], y[:8], eps=0.1, steps=3, step_size=0.05)
    fgsm(model, x[:8], y[:8], eps=0.1)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))


def test_attack_works_under_no_grad(trained) -> None:
    model, x, y = trained
    with torch.no_grad():
        x_adv = pgd(model, x[:8], y[:8], eps=0.1, steps=2, step_size=0.05, random_start=False)
    assert (x_adv - x[:8]).abs().amax().item() > 0.09


def test_ascent_step_directions() -> None:
    """From the image centre, one step follows sign(grad) (Linf) or grad / ||grad|| (L2)."""
    w = torch.tensor([[3.0, -4.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    model = Linear(w)
    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    linf = pgd(model, x, y, eps=0.3, steps=1, step_size=0.1, random_start=False, loss_fn=first_logit)
    assert torch.allclose(linf - x, 0.1 * w.sign())
    l2 = pgd(model, x, y, eps=0.3, steps=1, step_size=0.1, norm="l2", random_start=False, loss_fn=first_logit)
    assert torch.allclose(l2 - x, 0.1 * w / 5.0)
    # further steps reach the boundary of the ball and stay on it
    l2_far = pgd(model, x, y, eps=0.3, steps=5, step_size=0.1, norm="l2", random_start=False, loss_fn=first_logit)
    assert torch.allclose(l2_far - x, 0.3 * w / 5.0, atol=1e-6)


def test_l2_projection() -> None:
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(6, 3, 4, 4, generator=gen)
    norms = delta.flatten(1).norm(dim=1)
    eps = float(norms.median())
    projected = project(delta, eps, "l2")
    new_norms = projected.flatten(1).norm(dim=1)
    outside = norms > eps
    assert torch.allclose(new_norms[outside], torch.full_like(new_norms[outside], eps), atol=1e-5)
    assert torch.equal(projected[~outside], delta[~outside])  # inside the ball: unchanged
    cosine = F.cosine_similarity(projected.flatten(1), delta.flatten(1), dim=1)
    assert torch.allclose(cosine, torch.ones(6), atol=1e-5)  # same direction


def test_l2_random_start_is_uniform_in_the_ball() -> None:
    """Uniform by volume in d = 16 dimensions: radius / eps has CDF r^16, so its median is 0.5^(1/16)."""
    torch.manual_seed(0)
    eps = 0.7
    radii = random_delta(torch.zeros(4000, 1, 4, 4), eps, "l2").flatten(1).norm(dim=1) / eps
    assert radii.max().item() <= 1 + 1e-6
    assert abs(radii.median().item() - 0.5 ** (1 / 16)) < 0.01
    assert (radii < 0.8).float().mean().item() == pytest.approx(0.8**16, abs=0.01)


def test_fgsm_default_step_is_one_and_a_quarter_eps() -> None:
    """From a uniform start, a 1.25 eps sign step ends on the boundary iff the start was >= -0.25 eps: 62.5%."""
    w = torch.ones(1, 1, 100, 100)
    model = Linear(w)
    x = torch.full((1, 1, 100, 100), 0.5)
    torch.manual_seed(0)
    x_adv = fgsm(model, x, torch.zeros(1, dtype=torch.long), eps=0.1, loss_fn=first_logit)
    at_boundary = ((x_adv - x) > 0.1 - 1e-6).float().mean().item()
    assert at_boundary == pytest.approx(0.625, abs=0.02)


def test_build_attack_uses_the_config() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, -0.1]]).view(1, 1, 2, 2)
    model = Linear(w)
    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.zeros(1, dtype=torch.long)
    assert build_attack(AttackConfig(name="none")) is None
    attack = build_attack(AttackConfig(name="pgd", eps=0.1, steps=2, step_size=0.01, random_start=False))
    assert isinstance(attack, TrainingAttack)
    assert torch.allclose(attack(model, x, y, loss_fn=first_logit) - x, 0.02 * w.sign())
    auto = build_attack(AttackConfig(name="pgd", eps=0.1, steps=8, random_start=False))  # step 2.5 eps / 8
    assert torch.allclose(auto(model, x, y, first_logit) - x, 0.1 * w.sign())
    one = build_attack(AttackConfig(name="pgd", eps=0.1, steps=1, random_start=False))  # one step of 2.5 eps
    assert torch.allclose(one(model, x, y, first_logit) - x, 0.1 * w.sign())
    fast = build_attack(AttackConfig(name="fgsm", eps=0.1, norm="l2", random_start=False))
    assert torch.allclose((fast(model, x, y, first_logit) - x).norm(), torch.tensor(0.1))
    # the default loss is cross-entropy: for label 1 the attack pushes toward class 0 (score up)
    assert (attack(model, x, torch.ones(1, dtype=torch.long)) - x).flatten().dot(w.flatten()) > 0


def test_inputs_outside_the_unit_box_are_rejected(trained) -> None:
    model, x, y = trained
    with pytest.raises(DataError, match=r"\[0, 1\]") as info:
        pgd(model, (x - 0.5) / 0.25, y, eps=0.1, steps=1, step_size=0.1)
    assert isinstance(info.value, UsageError)
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, y, eps=0.1, steps=1, step_size=0.1, norm="l1")
