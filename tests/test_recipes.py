"""Every shipped recipe parses, and one training step of it runs on a tiny model with synthetic data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from akd_edge.config import RECIPES_DIR, ModelConfig, TeacherSpec, load_recipe, read_toml, shipped_recipes
from akd_edge.data import iterate_batches
from akd_edge.methods import METHODS
from akd_edge.models import create_model
from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, save_atomic
from akd_edge.train.loop import Trainer

RECIPES = shipped_recipes()


def test_the_issue_s_recipes_are_shipped() -> None:
    for name in (
        "fmnist-teacher",
        "fmnist-quickstart",
        "fmnist-akd",
        "cifar10-akd-resnet18",
        "cifar10-akd-mobilenetv2",
        "cifar10-akd-resnet18-b512",
        "cifar10-akd-mobilenetv2-b512",
    ):
        assert name in RECIPES


@pytest.mark.parametrize("student", ["resnet18", "mobilenetv2"])
def test_large_batch_variants_scale_the_rate_linearly_and_warm_up(student: str) -> None:
    """cifar10-akd-STUDENT-b512: the base recipe with the batch and the peak rate both x4 and a warm-up."""
    base = load_recipe(RECIPES[f"cifar10-akd-{student}"])
    large = load_recipe(RECIPES[f"cifar10-akd-{student}-b512"])
    scale = large.data.batch_size / base.data.batch_size
    assert scale == 4 and large.train.optim.lr == pytest.approx(base.train.optim.lr * scale)
    assert large.train.optim.warmup > 0 and large.train.optim.schedule == base.train.optim.schedule
    assert large.train.epochs == base.train.epochs and large.train.attack == base.train.attack
    assert large.method == base.method and large.model == base.model


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_parses_and_states_what_it_is(name: str) -> None:
    recipe = load_recipe(RECIPES[name])
    raw = read_toml(RECIPES[name])
    assert raw.get("description"), "every recipe has a one-line description"
    assert "expected" in raw, "every recipe states its expected time and results"
    assert recipe.run.name == name
    if METHODS.get(recipe.method.name).needs_teacher:
        assert recipe.teachers, "a distillation recipe names its teachers"
        # AKD guideline: the training attack is no stronger than the threat model it is judged against.
        assert recipe.train.attack.eps <= recipe.eval.attack.eps
        assert recipe.train.attack.steps <= recipe.eval.attack.steps


def _tiny_teacher(path: Path, shape: tuple[int, int, int], classes: int) -> str:
    model = create_model(
        "cnn-student", num_classes=classes, input_shape=shape, mean=[0.5] * shape[0], std=[0.25] * shape[0], width=0.25
    )
    arch = {
        "name": "cnn-student",
        "kwargs": {"width": 0.25},
        "num_classes": classes,
        "input_shape": list(shape),
        "mean": [0.5] * shape[0],
        "std": [0.25] * shape[0],
    }
    save_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "arch": arch,
            "data": {},
            "threat": {},
            "role": "teacher",
        },
        path,
    )
    return str(path)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_one_training_step_of_each_recipe(name: str, tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES[name])
    channels = 3 if recipe.data.name.startswith("cifar") else 1
    shape = (channels, 16, 16)
    spec = f"n=96,test=16,shape={channels}x16x16,classes=10"
    recipe = replace(
        recipe,
        data=replace(
            recipe.data,
            name="synthetic",
            data_dir=spec,
            val_size=16,
            batch_size=8,
            labeled=min(recipe.data.labeled, 40),  # a few-label recipe keeps its unlabelled share
        ),
        model=ModelConfig(name="cnn-student", kwargs={"width": 0.25}),
        teachers=[TeacherSpec(path=_tiny_teacher(tmp_path / "t.pt", shape, 10))] if recipe.teachers else [],
    )
    trainer = Trainer(recipe, tmp_path / "run", "student")
    # the step below must run on the tiny synthetic stand-in, never on the recipe's real dataset
    assert (trainer.splits.name, trainer.splits.input_shape, trainer.splits.num_classes) == ("synthetic", shape, 10)
    assert len(trainer.train_set) == 96 - 16  # labelled, plus any unlabelled images the teachers labelled
    before = [p.detach().clone() for p in trainer.model.parameters()]
    x, y, _ = next(iter(iterate_batches(trainer.train_set, 8, shuffle=True)))
    trainer.prepare()
    out = trainer._step(x, y)
    assert torch.isfinite(out["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))


def test_recipes_ship_inside_the_package_and_the_top_level_folder_is_the_same() -> None:
    package = Path(__import__("akd_edge").__file__).resolve().parent
    assert RECIPES_DIR.resolve() == package / "recipes"
    top = package.parent / "recipes"
    if top.exists():  # a source checkout: recipes/ is a symlink to the package's copy, one source of truth
        assert top.resolve() == RECIPES_DIR.resolve()
    assert sorted(p.name for p in (RECIPES_DIR / "results").glob("*.json")), "published results ship too"


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_texts_speak_of_the_recipe_and_stay_true(name: str) -> None:
    """Descriptions and notes describe the recipe, not the tracker, and a note never says a measured recipe
    is unmeasured."""
    import re

    from akd_edge.config import recipe_results

    raw = read_toml(RECIPES[name])
    note = raw["expected"].get("note", "")
    for text in (raw["description"], note):
        assert not re.search(r"\bissues?\s*#?\d+", text, re.IGNORECASE), text
    if recipe_results(name) is not None:
        assert "not measured" not in note, f"{name} has recipes/results/{name}.json but its note says {note!r}"


def test_measured_where_reads_cpu_and_gpu_machines() -> None:
    from akd_edge.config import measured_summary, measured_where

    cpu = {"machine": "x86_64 , 2 torch threads, torch 2.13.0+cpu, device cpu"}
    assert measured_where(cpu) == "x86_64 CPU, 2 torch threads"
    gpu = {
        "machine": "trained on one NVIDIA H200 (torch 2.11.0+cu130, device cuda), tested on x86_64 , 1 torch "
        "threads, torch 2.13.0+cpu, device cpu"
    }
    assert measured_where(gpu) == "trained on one NVIDIA H200, tested on x86_64 CPU, 1 torch thread"
    result = {**cpu, "wall_time_s": 987.9, "test": {"clean_acc": 0.839, "robust_acc": 0.711}}
    assert measured_summary(result) == "83.9% / 71.1%, 16 min (x86_64 CPU, 2 torch threads)"


def test_recipes_command_shows_each_measured_recipe_whole() -> None:
    from click.testing import CliRunner

    from akd_edge.cli.main import cli
    from akd_edge.config import measured_summary, recipe_results

    output = CliRunner().invoke(cli, ["recipes"], terminal_width=400, env={"COLUMNS": "400"}).output
    flat = " ".join(output.split())
    assert "on trained" not in flat
    for name in RECIPES:
        if (result := recipe_results(name)) is not None:
            assert measured_summary(result) in flat, name


def test_recipes_command_never_cuts_a_recipe_name_on_a_narrow_terminal() -> None:
    """A user copies the name from the listing: at 80 columns every name is whole, on one line."""
    from click.testing import CliRunner

    from akd_edge.cli.main import cli

    output = CliRunner().invoke(cli, ["recipes"], terminal_width=80, env={"COLUMNS": "80"}).output
    first_cells = {line.split("│")[1].strip() for line in output.splitlines() if line.startswith("│")}
    assert set(RECIPES) <= first_cells
    assert "[expected] note" in output
