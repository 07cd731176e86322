"""The one evaluation engine: validation, compress and eval measure through it with unchanged numbers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from akd_edge.attacks import build_attack
from akd_edge.attacks.suite import AttackSpec, ConfigAttack
from akd_edge.config import AttackConfig
from akd_edge.core.interval import wilson_interval
from akd_edge.data import iterate_batches, load_test_split
from akd_edge.evaluation.engine import evaluate_batches, evaluate_dataset
from akd_edge.models import create_model
from akd_edge.models.mode import eval_mode
from akd_edge.train.validate import validate

SYNTHETIC = "n=64,test=40,shape=1x8x8,classes=4,noise=0.25,seed=1"


@pytest.fixture(scope="module")
def model_and_data() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = create_model("cnn-student", num_classes=4, input_shape=(1, 8, 8), mean=0.5, std=0.25)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8))
    dataset, _ = load_test_split("synthetic", SYNTHETIC)
    return model.eval(), dataset


def reference_validate(model: nn.Module, dataset, cfg: AttackConfig, batch_size: int) -> dict[str, float]:
    """validate() as it was before the engine: the numbers the engine must reproduce."""
    attack = build_attack(cfg)
    correct_clean = correct_adv = total = 0
    with eval_mode(model):
        for x, y, _ in iterate_batches(dataset, batch_size):
            with torch.no_grad():
                correct_clean += (model(x).argmax(1) == y).sum().item()
            x_adv = attack(model, x, y) if attack is not None else x
            with torch.no_grad():
                correct_adv += (model(x_adv).argmax(1) == y).sum().item()
            total += len(y)
    return {"clean_acc": correct_clean / total, "robust_acc": correct_adv / total, "n": total}


@pytest.mark.parametrize(
    "cfg",
    [
        AttackConfig(eps=0.3, steps=3),
        AttackConfig(name="fgsm", eps=0.3),
        AttackConfig(name="pgd", norm="l2", eps=1.0, steps=2),
        AttackConfig(name="none"),
    ],
    ids=["pgd", "fgsm", "pgd-l2", "none"],
)
def test_validate_reproduces_the_previous_numbers_and_rng_stream(model_and_data, cfg: AttackConfig) -> None:
    model, dataset = model_and_data
    torch.manual_seed(7)
    expected = reference_validate(model, dataset, cfg, batch_size=16)
    after_expected = torch.rand(3)
    torch.manual_seed(7)
    got = validate(model, dataset, cfg, batch_size=16)
    assert got == expected
    assert torch.equal(torch.rand(3), after_expected)  # training after validation draws the same numbers
    if cfg.name != "none":
        assert got["robust_acc"] < got["clean_acc"]  # the attack did something at this radius


def test_validate_of_an_empty_set_scores_zero(model_and_data) -> None:
    model, dataset = model_and_data
    empty = dataset.subset([])
    assert validate(model, empty, AttackConfig()) == {"clean_acc": 0.0, "robust_acc": 0.0, "n": 0}


def test_engine_returns_per_sample_flags_consistent_with_accuracies(model_and_data) -> None:
    from akd_edge.core.errors import UsageError

    model, dataset = model_and_data
    specs = [ConfigAttack(AttackConfig(name="fgsm", eps=0.3)), AttackSpec("pgd", eps=0.3, steps=2)]
    run = evaluate_dataset(model, dataset, specs, batch_size=16, calibration=False, checks=False)
    assert set(run.flags) == {"clean", "fgsm", "pgd", "worst_case"}
    for name, flags in run.flags.items():
        assert flags.dtype == torch.bool and len(flags) == len(dataset)
        assert run.acc(name) == pytest.approx(flags.float().mean().item())
    assert torch.equal(run.flags["worst_case"], run.flags["clean"] & run.flags["fgsm"] & run.flags["pgd"])
    settings = run.results["attacks"]["pgd"]["settings"]
    assert settings["eps"] == 0.3 and settings["steps"] == 2 and settings["seed"] == 0
    with pytest.raises(UsageError, match="distinct"):  # PGD from a recipe and eval's PGD share a name
        evaluate_dataset(model, dataset, [ConfigAttack(AttackConfig()), AttackSpec("pgd")], batch_size=16)


def test_config_attack_settings_and_eps_zero(model_and_data) -> None:
    model, dataset = model_and_data
    cfg = AttackConfig(eps=0.0, steps=2)
    run = evaluate_dataset(model, dataset, [ConfigAttack(cfg)], batch_size=40, calibration=False, checks=False)
    assert torch.equal(run.flags["pgd"], run.flags["clean"])  # eps 0 changes nothing
    assert run.results["attacks"]["pgd"]["settings"] == cfg.settings()


def test_engine_refuses_an_empty_stream(model_and_data) -> None:
    from akd_edge.core.errors import DataError

    model, _ = model_and_data
    with pytest.raises(DataError, match="empty"):
        evaluate_batches(model, iter(()), [])


def test_compress_measure_matches_validate_and_the_autoattack_wrapper(model_and_data) -> None:
    from akd_edge.attacks.autoattack import run_autoattack_report
    from akd_edge.compress.measure import autoattack_accuracy, pgd_accuracy

    model, dataset = model_and_data
    cfg = AttackConfig(eps=0.3, steps=3)
    torch.manual_seed(3)
    expected = validate(model, dataset, cfg, batch_size=16)
    got = pgd_accuracy(model, dataset, cfg, seed=3, batch_size=16)
    n = expected["n"]
    assert got == {
        "clean_acc": expected["clean_acc"],
        "clean_ci95": wilson_interval(round(expected["clean_acc"] * n), n),
        "pgd_acc": expected["robust_acc"],
        "pgd_ci95": wilson_interval(round(expected["robust_acc"] * n), n),
        "n": n,
    }

    # AutoAttack: the numbers of the previous implementation (one wrapper call on the first n images, seed 0).
    aa = autoattack_accuracy(model, dataset, norm="linf", eps=0.3, version="fast", n=12, seed=0, batch_size=16)
    x, y, _ = next(iterate_batches(dataset.subset(list(range(12))), 12))
    per_attack = run_autoattack_report(
        model, x, y, norm="linf", eps=0.3, version="fast", seed=0, batch_size=16
    ).per_attack
    robust = int(torch.stack(list(per_attack.values())).all(0).sum())
    assert aa == {"aa_acc": robust / 12, "aa_ci95": wilson_interval(robust, 12), "aa_n": 12, "aa_version": "fast"}


def test_compress_autoattack_skips_models_with_too_few_classes(caplog) -> None:
    from akd_edge.compress.measure import autoattack_accuracy

    dataset, _ = load_test_split("synthetic", "n=16,test=8,shape=1x8x8,classes=3,seed=1")
    model = create_model("cnn-student", num_classes=3, input_shape=(1, 8, 8), mean=0.5, std=0.25).eval()
    assert autoattack_accuracy(model, dataset, norm="linf", eps=0.1, version="fast", n=8) is None
    assert "needs >= 4 classes" in caplog.text
