"""The AutoAttack wrapper: worst case per sample, eps-ball, mode and RNG restored, no printing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from akd_edge.attacks.autoattack import run_autoattack, run_autoattack_report
from akd_edge.errors import UsageError


def prototype_model(
    n_classes: int = 4, shape: tuple[int, int, int] = (1, 8, 8), scale: float = 4.0, n: int = 24
) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A nearest-class-mean linear classifier and images near its prototypes: accurate but not robust at large eps."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.rand(n_classes, *shape, generator=generator)
    linear = nn.Linear(prototypes[0].numel(), n_classes)
    flat = prototypes.flatten(1)
    with torch.no_grad():
        linear.weight.copy_(2 * scale * flat)
        linear.bias.copy_(-scale * (flat**2).sum(1))
    model = nn.Sequential(nn.Flatten(), linear, nn.Dropout(0.5))  # dropout: train mode must not leak into attacks
    y = torch.arange(n) % n_classes
    x = (prototypes[y] + 0.15 * torch.randn(n, *shape, generator=generator)).clamp(0, 1)
    return model, x, y


@pytest.mark.parametrize(("version", "eps"), [("fast", 0.2), ("square", 0.4)])
def test_cascade_flags_are_the_worst_case(version: str, eps: float) -> None:
    model, x, y = prototype_model()
    model.train()
    result = run_autoattack_report(model, x, y, eps=eps, version=version, n_queries=200)
    assert model.training and all(m.training for m in model.modules())  # mode restored
    flags = list(result.per_attack.values())
    assert list(result.per_attack) == (["apgd-ce", "apgd-t"] if version == "fast" else ["square"])
    previous = result.clean
    for f in flags:  # cascade: robustness only decreases attack after attack
        assert not (f & ~previous).any()
        previous = f
    assert torch.equal(flags[-1], result.robust)
    assert 0 < result.robust.sum() < result.clean.sum()  # the attack found some examples, not all
    assert (result.x_adv - x).abs().amax() <= eps + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    with torch.no_grad():
        still_right = model.eval()(result.x_adv).argmax(1) == y
    assert torch.equal(still_right, result.robust)  # the returned examples realise the reported flags
    assert result.settings["n_samples"] == 24 and result.settings["eps"] == eps


def test_attacks_break_a_non_robust_model_and_eps_zero_is_rejected() -> None:
    model, x, y = prototype_model()
    x_adv, per_attack = run_autoattack(model, x, y, eps=0.5, version="fast")
    assert per_attack["apgd-t"].sum() == 0  # a linear model is fooled at a large radius
    assert (x_adv - x).abs().amax() <= 0.5 + 1e-6
    with pytest.raises(UsageError, match="eps > 0"):
        run_autoattack(model, x, y, eps=0.0)


def test_individual_mode_and_worst_case_is_and_of_attacks() -> None:
    model, x, y = prototype_model(n=8)
    result = run_autoattack_report(model, x, y, eps=0.2, version="standard", n_queries=50, individual=True)
    assert list(result.per_attack) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    both = torch.stack(list(result.per_attack.values())).all(0)
    assert torch.equal(both, result.robust)
    assert result.robust.sum() < result.clean.sum()
    for flags in result.per_attack.values():
        assert result.robust.sum() <= flags.sum() <= result.clean.sum()


def test_no_printing_and_caller_rng_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    model, x, y = prototype_model()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_autoattack(model, x, y, eps=0.1, version="square", n_queries=20, seed=5)
    assert torch.equal(torch.rand(3), expected)
    captured = capsys.readouterr()
    assert captured.out == ""


def test_same_seed_same_result() -> None:
    model, x, y = prototype_model()
    a, flags_a = run_autoattack(model, x, y, eps=0.1, version="square", n_queries=30, seed=3)
    b, flags_b = run_autoattack(model, x, y, eps=0.1, version="square", n_queries=30, seed=3)
    assert torch.equal(a, b) and torch.equal(flags_a["square"], flags_b["square"])


def test_square_needs_no_gradients_and_few_classes_rule() -> None:
    model, x, y = prototype_model(n_classes=3)
    y = y % 3

    class OutputsOnly(nn.Module):
        """A black box: no autograd graph (as an onnxruntime session wrapped in a module)."""

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return model.eval()(inputs)

    x_adv, per_attack = run_autoattack(OutputsOnly(), x, y, eps=0.3, version="square", n_queries=200)
    assert per_attack["square"].shape == (24,)
    with pytest.raises(UsageError, match="at least 4 classes"):
        run_autoattack(model, x, y, eps=0.1, version="fast")
    with pytest.raises(UsageError, match="norm"):
        run_autoattack(model, x, y, eps=0.1, norm="l1")
    with pytest.raises(UsageError, match="version"):
        run_autoattack(model, x, y, eps=0.1, version="plus")
