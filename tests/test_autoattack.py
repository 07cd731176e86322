"""The AutoAttack wrapper: worst case per sample, eps-ball, mode and RNG restored, no printing; Square on any callable."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from akd_edge.attacks.autoattack import run_autoattack_report, run_square
from akd_edge.core.errors import DataError, UsageError


def run_autoattack(*args, **kwargs):
    """``(x_adv, per_attack)`` of :func:`run_autoattack_report`."""
    result = run_autoattack_report(*args, **kwargs)
    return result.x_adv, result.per_attack


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


# ---------------------------------------------------------------- run_square: the official Square on a callable


def linear_predict(seed: int = 0, classes: int = 4, shape: tuple[int, ...] = (1, 8, 8)):  # noqa: ANN201
    """A plain function (no module, no autograd) with small margins: easy to fool."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(int(torch.tensor(shape).prod()), classes, generator=generator) * 0.5

    def predict(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ weights

    return predict


def labelled_points(predict, n: int = 40, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return x, predict(x).argmax(1)  # labels = the model's own predictions: clean accuracy 100%


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.5)])
def test_square_on_a_callable_fools_small_margins_within_eps(norm: str, eps: float) -> None:
    predict = linear_predict()
    x, y = labelled_points(predict)
    ticks: list[tuple[int, int]] = []
    result = run_square(
        predict, x, y, eps=eps, norm=norm, n_queries=300, batch_size=16, progress=lambda d, t: ticks.append((d, t))
    )
    assert result.clean.all() and result.robust.float().mean() < 0.5  # accuracy drops, never rises
    assert torch.equal(result.robust, predict(result.x_adv).argmax(1) == y)  # the examples realise the flags
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    diff = (result.x_adv - x).flatten(1)
    size = diff.abs().amax(1) if norm == "linf" else diff.norm(dim=1)
    assert size.max() <= eps + 1e-5
    done = [d for d, _ in ticks]
    assert done == sorted(done) and ticks[-1] == (3 * 300, 3 * 300)  # 40 images in 3 batches
    settings = result.settings
    assert settings["implementation"].startswith("pyautoattack") and settings["restarts"] == 1
    assert (settings["norm"], settings["eps"], settings["n_queries"], settings["loss"]) == (norm, eps, 300, "margin")


def test_square_cannot_move_a_constant_model_and_skips_misclassified() -> None:
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(2))

    def constant(inputs: torch.Tensor) -> torch.Tensor:  # robust by construction
        return torch.tensor([0.0, 3.0, 1.0, -1.0]).repeat(len(inputs), 1)

    y = torch.ones(12, dtype=torch.long)
    y[:3] = 2  # misclassified without attack
    result = run_square(constant, x, y, eps=0.5, n_queries=30)
    assert torch.equal(result.robust, result.clean) and result.clean[3:].all() and not result.clean[:3].any()
    assert torch.equal(result.x_adv, x)  # nothing fooled, nothing changed

    def tied(inputs: torch.Tensor) -> torch.Tensor:  # margin 0 everywhere: the attack queries an empty batch
        return torch.zeros(len(inputs), 4)

    tie = run_square(tied, x, torch.zeros(12, dtype=torch.long), eps=0.5, n_queries=5)
    assert tie.clean.all() and tie.robust.all()


def test_square_more_queries_never_hurt_seeded_quiet_and_rng_untouched(capsys: pytest.CaptureFixture[str]) -> None:
    predict = linear_predict(seed=2)
    x, y = labelled_points(predict, seed=3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    # without rescaling, 20 queries are the first 20 of 400 (same seed): a sample fooled early stays fooled
    few = run_square(predict, x, y, eps=0.03, n_queries=20, seed=7, rescale_schedule=False)
    many = run_square(predict, x, y, eps=0.03, n_queries=400, seed=7, rescale_schedule=False)
    assert torch.equal(torch.rand(3), expected)
    again = run_square(predict, x, y, eps=0.03, n_queries=400, seed=7, rescale_schedule=False)
    assert not (many.robust & ~few.robust).any() and many.robust.sum() < few.robust.sum()
    assert torch.equal(many.x_adv, again.x_adv)
    assert capsys.readouterr().out == ""


def test_square_rejects_bad_settings_and_outputs() -> None:
    predict = linear_predict()
    x, y = labelled_points(predict, n=4)
    for kwargs, match in [
        ({"eps": 0.0}, "eps > 0"),
        ({"eps": 0.1, "norm": "l1"}, "norm"),
        ({"eps": 0.1, "loss": "dlr"}, "loss"),
        ({"eps": 0.1, "p_init": 0.0}, "p_init"),
        ({"eps": 0.1, "n_queries": 0}, "n_queries"),
    ]:
        with pytest.raises(UsageError, match=match):
            run_square(predict, x, y, **kwargs)
    with pytest.raises(UsageError, match="logits"):
        run_square(lambda inputs: inputs.flatten(1)[:, 0], x, y, eps=0.1)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        run_square(predict, x * 255, y, eps=0.1)
