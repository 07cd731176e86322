"""TeacherEnsemble: weighted probabilities against hand-computed values, frozen eval mode, no gradients."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from akd_edge.attacks import build_attack
from akd_edge.config import AttackConfig, MethodConfig, TeacherSpec, load_recipe
from akd_edge.core.errors import ConfigError
from akd_edge.methods import create_task
from akd_edge.models.checkpoint import load_model
from akd_edge.teachers import TeacherEnsemble, load_teachers
from akd_edge.train.loop import Trainer, train_run

SYNTH = "n=256,test=64,shape=1x8x8,classes=3"
X = torch.eye(2)  # sample 0 = e1, sample 1 = e2: a bias-free linear teacher's logits are its weight columns


def linear_teacher(probs_e1: list[float], probs_e2: list[float]) -> nn.Module:
    """Logits log(v): softmax gives v / sum(v) at temperature 1 and sqrt(v) / sum(sqrt(v)) at temperature 2."""
    layer = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([probs_e1, probs_e2]).log().T)
    return layer


def two_teachers() -> list[nn.Module]:
    # A: e1 -> (1, 4, 4)/9, e2 -> (4, 1, 1)/6;  B: e1 -> (1, 1, 4)/6, e2 -> uniform.
    return [linear_teacher([1, 4, 4], [4, 1, 1]), linear_teacher([1, 1, 4], [1, 1, 1])]


# Weights (3, 1) normalise to (0.75, 0.25); each row is 0.75 p_A + 0.25 p_B, written out by hand.
EXPECTED_T1 = [
    [0.75 / 9 + 0.25 / 6, 0.75 * 4 / 9 + 0.25 / 6, 0.75 * 4 / 9 + 0.25 * 4 / 6],  # (1/8, 3/8, 1/2)
    [0.75 * 4 / 6 + 0.25 / 3, 0.75 / 6 + 0.25 / 3, 0.75 / 6 + 0.25 / 3],  # (7/12, 5/24, 5/24)
]
EXPECTED_T2 = [  # sqrt: A e1 -> (1, 2, 2)/5, B e1 -> (1, 1, 2)/4, A e2 -> (2, 1, 1)/4, B e2 -> uniform
    [0.2125, 0.3625, 0.425],
    [11 / 24, 13 / 48, 13 / 48],
]


@pytest.mark.parametrize(("temperature", "expected"), [(1.0, EXPECTED_T1), (2.0, EXPECTED_T2)])
def test_probabilities_are_averaged_with_normalised_weights(temperature: float, expected: list) -> None:
    ensemble = TeacherEnsemble(two_teachers(), weights=[3.0, 1.0])
    probs = ensemble.probs(X, temperature=temperature)
    assert torch.allclose(probs, torch.tensor(expected), atol=1e-6)
    assert torch.allclose(probs.sum(1), torch.ones(2), atol=1e-6)
    # Only the ratio of the weights matters.
    assert torch.allclose(TeacherEnsemble(two_teachers(), weights=[0.75, 0.25]).probs(X, temperature), probs)


def test_default_weights_are_equal_and_forward_is_the_log_of_the_probabilities() -> None:
    ensemble = TeacherEnsemble(two_teachers())
    # Sample 0: (1/9 + 1/6) / 2, (4/9 + 1/6) / 2, (4/9 + 4/6) / 2.
    expected = torch.tensor([[5 / 36, 11 / 36, 20 / 36], [(4 / 6 + 1 / 3) / 2, (1 / 6 + 1 / 3) / 2, 0.25]])
    assert torch.allclose(ensemble.probs(X), expected, atol=1e-6)
    assert torch.allclose(ensemble(X), expected.log(), atol=1e-5)
    assert math.isclose(float(ensemble.weights.sum()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("weights", [[1.0], [1.0, 0.0], [1.0, -2.0]])
def test_weights_must_be_one_positive_number_per_teacher(weights: list[float]) -> None:
    with pytest.raises(ValueError, match="positive weight per teacher"):
        TeacherEnsemble(two_teachers(), weights=weights)


def bn_dropout_teacher() -> nn.Module:
    """A teacher whose output would change in train mode (Dropout) and whose BatchNorm stats would move."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3))
    with torch.no_grad():
        model[2].running_mean.uniform_(-1, 1)
        model[2].running_var.uniform_(0.5, 2)
    return model


class StudentWithTeacher(nn.Module):
    """A parent that owns both the student and the ensemble, so ``parent.train()`` reaches the teachers."""

    def __init__(self, teacher: TeacherEnsemble) -> None:
        super().__init__()
        self.student = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
        self.teacher = teacher


def test_train_mode_never_reaches_the_teachers_and_a_student_step_leaves_them_untouched() -> None:
    teachers = [bn_dropout_teacher(), bn_dropout_teacher()]
    ensemble = TeacherEnsemble(teachers, weights=[1.0, 2.0])
    parent = StudentWithTeacher(ensemble)
    before = {k: v.clone() for k, v in ensemble.state_dict().items()}

    parent.train()
    ensemble.train()
    ensemble.train(True)
    assert parent.training and parent.student.training
    assert not any(m.training for m in ensemble.modules()), "a teacher module is in train mode"

    x = torch.rand(8, 1, 2, 2)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    task = create_task(
        MethodConfig(name="akd", alpha=0.9), parent.student, build_attack(AttackConfig(eps=0.1, steps=2)), ensemble
    )
    out = task(x, y)
    out["loss"].backward()

    # Dropout off: the same input gives the same probabilities twice; BatchNorm used its running stats.
    assert torch.equal(ensemble.probs(x), ensemble.probs(x))
    after = ensemble.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "a teacher parameter or BN statistic changed"
    # No gradient reaches a teacher; the student does get one.
    assert all(not p.requires_grad and p.grad is None for p in ensemble.parameters())
    assert all(p.grad is not None for p in parent.student.parameters())
    assert not ensemble.probs(x.requires_grad_()).requires_grad


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny teacher trained for one epoch (cnn-student has BatchNorm, so its stats would show a leak)."""
    run = tmp_path_factory.mktemp("teacher") / "run"
    train_run(load_recipe(tiny_recipe("at")), run, role="teacher")
    return run


def tiny_recipe(method: str, **teachers: object) -> dict:
    recipe = {
        "run": {"name": method, "seed": 1},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 64, "batch_size": 64, "eval_batch_size": 64},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": method},
        "train": {"epochs": 1, "keep_epoch_checkpoints": False, "attack": {"eps": 0.1, "steps": 1}},
        "eval": {"val_samples": 32, "attack": {"eps": 0.1, "steps": 1}},
    }
    if teachers:
        recipe["teachers"] = [teachers]
    return recipe


@pytest.mark.parametrize("fast_teacher", [False, True])
def test_distillation_run_leaves_teacher_weights_and_statistics_bit_identical(
    teacher_run: Path, tmp_path: Path, fast_teacher: bool
) -> None:
    recipe = load_recipe(tiny_recipe("akd", path=str(teacher_run)), [f"train.fast_teacher={str(fast_teacher).lower()}"])
    trainer = Trainer(recipe, tmp_path / "student", "student")
    loaded = trainer.teacher  # the fast path (BatchNorm folded) runs a copy: the loaded teacher is never changed
    student_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    saved, _ = load_model(teacher_run)
    teacher_state = loaded.members[0].state_dict()
    assert teacher_state.keys() == saved.state_dict().keys()
    assert any("running_mean" in k for k in teacher_state)
    assert all(torch.equal(teacher_state[k], v) for k, v in saved.state_dict().items())
    for teacher in (loaded, trainer.teacher):
        assert not any(m.training for m in teacher.modules())
        assert all(p.grad is None for p in teacher.parameters())
    assert (trainer.teacher is not loaded) == fast_teacher
    # ... while the student's own BatchNorm statistics and weights did move.
    assert any(not torch.equal(student_before[k], v) for k, v in trainer.model.state_dict().items())


def test_load_teachers_rejects_a_teacher_for_other_data(teacher_run: Path) -> None:
    spec = TeacherSpec(path=str(teacher_run))
    ensemble = load_teachers(
        [spec, TeacherSpec(path=str(teacher_run), weight=3.0)], input_shape=(1, 8, 8), num_classes=3
    )
    assert torch.allclose(ensemble.weights, torch.tensor([0.25, 0.75]))
    with pytest.raises(ConfigError, match=r"inputs of shape \(1, 8, 8\).*\(3, 8, 8\)"):
        load_teachers([spec], input_shape=(3, 8, 8), num_classes=3)
    with pytest.raises(ConfigError, match="has 3 classes, the data has 10"):
        load_teachers([spec], input_shape=(1, 8, 8), num_classes=10)


def test_a_float32_teacher_stays_float32_inside_the_students_bf16_step() -> None:
    ensemble = TeacherEnsemble(two_teachers())
    seen = []
    ensemble.members[0].register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ensemble.probs(X)
        ensemble.configure(precision="bf16")
        ensemble.probs(X)
    assert seen == [torch.float32, torch.bfloat16]


def test_ensemble_weights_are_on_the_members_device() -> None:
    """Members already on an accelerator make the whole ensemble live there (meta stands in for CUDA)."""
    ensemble = TeacherEnsemble([torch.nn.Linear(2, 2).to("meta"), torch.nn.Linear(2, 2).to("meta")], [1.0, 3.0])
    assert ensemble.weights.device.type == "meta"
    assert TeacherEnsemble([torch.nn.Linear(2, 2)]).weights.device.type == "cpu"
