"""Cached teacher outputs for objectives whose teacher sees only the clean, unaugmented batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from akd_edge.config import load_recipe
from akd_edge.data import iterate_batches
from akd_edge.methods import METHODS
from akd_edge.teachers import CleanTeacherCache
from akd_edge.train.loop import Trainer, train_run

SYNTH = "n=256,test=64,shape=1x8x8,classes=3"


def recipe(method: str, teacher: str = "", **method_cfg: object) -> dict:
    data = {"name": "synthetic", "data_dir": SYNTH, "val_size": 64, "batch_size": 64, "eval_batch_size": 64}
    r = {
        "run": {"name": method, "seed": 3, "device": "cpu"},
        "data": data,
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": method, **method_cfg},
        "train": {"epochs": 1, "keep_epoch_checkpoints": False, "attack": {"eps": 0.1, "steps": 1}},
        "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
    }
    if teacher:
        r["teachers"] = [{"path": teacher}]
    return r


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_run(load_recipe(recipe("at")), run, role="teacher")
    return str(run)


@pytest.mark.parametrize(
    ("method", "cfg", "cached"),
    [
        ("ard", {}, True),
        ("rslad", {}, True),
        ("akd", {"teacher_input": "clean"}, True),
        ("akd", {"teacher_input": "adv"}, False),
    ],
)
def test_cache_is_built_exactly_when_the_teacher_sees_only_clean_images(
    teacher: str, tmp_path: Path, method: str, cfg: dict, cached: bool
) -> None:
    trainer = Trainer(load_recipe(recipe(method, teacher, **cfg)), tmp_path / "run", "student")
    trainer.prepare()
    assert METHODS.get(method).teacher_sees_clean(trainer.recipe.method) == cached
    assert (trainer.task.clean_cache is not None) == cached
    augmented = Trainer(load_recipe(recipe(method, teacher, **cfg), ["data.augment=true"]), tmp_path / "a", "student")
    augmented.prepare()
    assert augmented.task.clean_cache is None  # an augmented batch is a new image every epoch


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cached_probabilities_equal_the_teachers_and_the_teacher_is_not_run(
    teacher: str, tmp_path: Path, temperature: float
) -> None:
    trainer = Trainer(load_recipe(recipe("ard", teacher, temperature=temperature)), tmp_path / "run", "student")
    trainer.prepare()
    task, ensemble = trainer.task, trainer.teacher
    x, _, idx = next(iter(iterate_batches(trainer.splits.train, 32, shuffle=True, seed=1)))
    direct = ensemble.probs(x, temperature)
    calls = []
    handle = ensemble.members[0].register_forward_hook(lambda *args: calls.append(1))
    try:
        task.use_clean_batch(x, idx)
        cached = task.teacher_probs(x, temperature)
        assert calls == []  # answered from the cache
        assert torch.allclose(cached, direct, atol=1e-5)
        other = x.clone()  # any other tensor (an adversarial batch, say) still runs the teacher
        assert torch.allclose(task.teacher_probs(other, temperature), direct, atol=1e-5)
        assert len(calls) == 1
    finally:
        handle.remove()


def test_cache_refuses_to_grow_past_its_limit(teacher: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CleanTeacherCache, "MAX_BYTES", 100)
    trainer = Trainer(load_recipe(recipe("rslad", teacher)), tmp_path / "run", "student")
    trainer.prepare()
    assert trainer.task.clean_cache is None
    summary = trainer.run()  # trains as before, running the teacher every step
    assert 0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1
