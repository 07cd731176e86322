"""Real data: the shipped teacher is robust on Fashion-MNIST, and AKD on a slice learns from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from akd_edge.config import AttackConfig, load_recipe
from akd_edge.core.errors import DataError
from akd_edge.data import load_test_split
from akd_edge.models.checkpoint import BUILTIN, load_model
from akd_edge.train.loop import train_run
from akd_edge.train.validate import validate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fmnist_test():
    try:
        return load_test_split("fashion-mnist", n=300)
    except DataError as err:
        pytest.skip(f"Fashion-MNIST files absent ({err}); `make data` installs them")


def test_shipped_teacher_is_robust(fmnist_test) -> None:
    assert BUILTIN["fmnist-teacher"].is_file(), "the shipped teacher weights are missing"
    test, _ = fmnist_test
    model, meta = load_model("builtin:fmnist-teacher")
    assert meta["role"] == "teacher"
    metrics = validate(model, test, AttackConfig(eps=0.1, steps=10), batch_size=300)
    # Clean ~85% and PGD-10 ~70% expected (see akd_edge/assets/fmnist-teacher.json); a broken or
    # non-robust teacher falls far below (an undefended CNN has ~0% under this attack).
    assert metrics["clean_acc"] > 0.75
    assert metrics["robust_acc"] > 0.55


def test_akd_on_a_slice_learns_from_the_shipped_teacher(fmnist_test, tmp_path: Path) -> None:
    recipe = load_recipe(
        "fmnist-quickstart",
        [
            "data.train_subset=4096",
            "data.val_size=1000",
            "train.epochs=2",
            "train.attack.steps=2",
            "eval.val_samples=500",
            "eval.attack.steps=5",
        ],
    )
    summary = train_run(recipe, tmp_path / "run")
    best = summary["best"]
    # 64 batches of AKD from the robust teacher, judged on 500 held-out images under PGD-5 at eps 0.1.
    # Measured at seed 0 (torch 2.13, 1 CPU thread): clean 0.58, robust 0.32 (seed 1: 0.64 / 0.40).
    # Chance is 0.10; the same run with train.attack.name=none ends at robust 0.03 (best epoch: 0.09).
    assert best["n"] == 500
    assert best["clean_acc"] > 0.45
    assert 0.2 < best["robust_acc"] <= best["clean_acc"]
