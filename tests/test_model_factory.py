"""A user's own architecture (``module:factory``) end to end: checkpoints never import the module they name,
the user names it with --model-factory / --teacher-factory / [[teachers]] factory, and every command works."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from akd_edge.cli.main import cli
from akd_edge.config import TeacherSpec, load_recipe, read_toml, to_dict
from akd_edge.core.errors import ConfigError
from akd_edge.models import model_info
from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_model, save_atomic
from akd_edge.train.loop import Callbacks, train_run
from akd_edge.train.rundir import recipe_changes

MODULE = "akd_factory_nets"
FACTORY = f"{MODULE}:tiny_net"
SYNTH = "n=160,test=48,shape=1x12x12,classes=4,noise=0.25"
NET = """
    import sys

    from torch import nn

    sys.akd_factory_imports = getattr(sys, "akd_factory_imports", 0) + 1


    def tiny_net(num_classes, input_shape=(1, 12, 12), width=16):
        return nn.Sequential(
            nn.Conv2d(input_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes),
        )
"""


def recipe(name: str, method: str, **extra: object) -> dict:
    return {
        "run": {"name": name, "seed": 1},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 32, "batch_size": 32, "eval_batch_size": 64},
        "model": {"name": FACTORY},
        "method": {"name": method},
        "train": {"epochs": 1, "checkpoint_every": 2, "attack": {"eps": 0.1, "steps": 2}, "optim": {"lr": 0.05}},
        "eval": {"val_samples": 32, "attack": {"eps": 0.1, "steps": 2}},
        **extra,
    }


def _write(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data))
    return path


def run(*args: str) -> object:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's ``akd_factory_nets`` module, importable from a folder on sys.path (as PYTHONPATH does)."""
    folder = tmp_path_factory.mktemp("user_code")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(NET))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


@pytest.fixture(scope="module")
def runs(user_module: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher and an AKD student of the user's architecture, both trained by the CLI from recipes."""
    root = tmp_path_factory.mktemp("runs")
    teacher = _write(root / "teacher.toml", recipe("teacher", "at"))
    result = run("train-teacher", "--recipe", str(teacher), "--out", str(root / "teacher"))
    assert result.exit_code == 0, result.output
    student = recipe("student", "akd", teachers=[{"path": str(root / "teacher"), "factory": FACTORY}])
    result = run("distill", "--recipe", str(_write(root / "student.toml", student)), "--out", str(root / "student"))
    assert result.exit_code == 0, result.output
    return root


def _refused(result: object, flag: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert flag in text and FACTORY in text and "not a registered architecture" in text, text


def test_eval_needs_the_flag_and_works_with_it(runs: Path) -> None:
    student = str(runs / "student")
    _refused(run("eval", student, "-n", "16", "--no-plots", "--no-calibration"), "--model-factory")
    result = run("eval", student, "-n", "16", "--steps", "2", "--no-plots", "--model-factory", FACTORY)
    assert result.exit_code == 0, result.output
    report = json.loads((runs / "student" / "eval.json").read_text())
    assert report["checkpoint"]["arch"] == FACTORY and report["options"]["factory"] == FACTORY
    assert 0 <= report["results"]["attacks"]["pgd"]["acc"] <= report["results"]["clean"]["acc"] <= 1


def test_export_needs_the_flag_and_works_with_it(runs: Path, tmp_path: Path) -> None:
    _refused(run("export", str(runs / "student"), "--out", str(tmp_path / "refused"), "--no-int8"), "--model-factory")
    out = tmp_path / "export"
    result = run("export", str(runs / "student"), "--out", str(out), "--no-int8", "--model-factory", FACTORY)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["checks"]["parity"]["passed"] and report["source"]["arch"]["name"] == FACTORY
    # verify attacks by transfer from the torch source checkpoint, which needs the factory too.
    args = ["verify", str(out), "-n", "16", "--data-dir", SYNTH, "--square-queries", "10", "--no-latency", "--json"]
    _refused(run(*args), "--model-factory")
    result = run(*args, "--model-factory", FACTORY)
    assert result.exit_code == 0, result.output
    verified = json.loads(result.output[result.output.index("{") :])
    assert verified["settings"]["transfer"]["checkpoint"].endswith("best.pt")
    assert verified["models"]["model.onnx"]["transfer_acc"] is not None


def test_compress_keeps_a_pruned_custom_model_working(runs: Path, tmp_path: Path) -> None:
    args = ["compress", str(runs / "student"), "--ratio", "0.5", "--epochs", "1", "-n", "16", "--autoattack", "none"]
    _refused(run(*args, "--out", str(tmp_path / "refused")), "--model-factory")
    # The source run's recipe names the teacher's factory; that file's word is not enough to import it.
    _refused(run(*args, "--out", str(tmp_path / "no-teacher"), "--model-factory", FACTORY), "--teacher-factory")
    out = tmp_path / "pruned"
    result = run(*args, "--out", str(out), "--model-factory", FACTORY, "--teacher-factory", FACTORY)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params"] < report["before"]["params"] and report["finetune"]["method"] == "akd"
    model, meta = load_model(out, factory=FACTORY)
    assert meta["pruning"]["history"] and model_info(model, (1, 12, 12))["params"] == report["after"]["params"]
    # The pruned model goes on through eval and export like any other.
    assert run("eval", str(out), "-n", "16", "--steps", "2", "--no-plots", "--model-factory", FACTORY).exit_code == 0
    result = run("export", str(out), "--out", str(tmp_path / "export"), "--no-int8", "--model-factory", FACTORY)
    assert result.exit_code == 0, result.output


def test_distill_from_a_teacher_of_the_users_architecture(runs: Path, tmp_path: Path) -> None:
    teacher, args = str(runs / "teacher"), ["distill", "--recipe", str(runs / "student.toml")]
    _refused(run(*args, "--teacher", teacher, "--out", str(tmp_path / "refused")), "--teacher-factory")
    result = run(*args, "--teacher", teacher, "--teacher-factory", FACTORY, "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    saved = load_recipe(read_toml(tmp_path / "s" / "recipe.toml"))
    assert saved.teachers == [TeacherSpec(path=teacher, factory=FACTORY)]


class _KillAt(Callbacks):
    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        if batch == 3:
            raise RuntimeError("killed")


def test_a_run_of_the_users_architecture_resumes(runs: Path, tmp_path: Path) -> None:
    cfg = load_recipe(read_toml(runs / "student.toml"))
    with pytest.raises(RuntimeError, match="killed"):
        train_run(cfg, tmp_path / "killed", callbacks=_KillAt())
    assert load_checkpoint(tmp_path / "killed", "last")["batch"] == 2
    # The run folder's recipe.toml names the module: a file's word, so it is imported only with --allow-code.
    _refused(run("distill", "--resume", str(tmp_path / "killed")), "--allow-code")
    result = run("distill", "--resume", str(tmp_path / "killed"), "--allow-code")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "killed", "last")["epoch"] == 1
    assert run("distill", "--resume", str(tmp_path / "killed"), "--teacher-factory", FACTORY).exit_code == 2


def test_a_run_saved_before_teachers_had_a_factory_still_resumes() -> None:
    current = to_dict(load_recipe(recipe("s", "akd", teachers=[{"path": "t"}])))
    saved = json.loads(json.dumps(current))
    del saved["teachers"][0]["factory"]
    assert recipe_changes(saved, current) == []
    saved["teachers"][0]["weight"] = 2.0
    assert recipe_changes(saved, current) == ["teachers.0.weight"]
    assert recipe_changes({**saved, "teachers": []}, current) == ["teachers"]


@pytest.mark.parametrize("bad", ["my_models", "my_models:", ":net", "a:b:c"])
def test_a_teacher_factory_must_be_module_colon_factory(bad: str) -> None:
    with pytest.raises(ConfigError, match="teachers.factory"):
        TeacherSpec(path="t", factory=bad)
    result = run("eval", "x", "--model-factory", bad)
    assert result.exit_code == 2 and "MODULE:FACTORY" in result.output


def test_a_checkpoint_naming_this_never_imports_it(runs: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(runs / "student")
    ckpt["arch"] = {**ckpt["arch"], "name": "this:x"}
    path = tmp_path / "this.pt"
    save_atomic({k: v for k, v in ckpt.items() if k != "path"} | {"format": CHECKPOINT_FORMAT}, path)
    sys.modules.pop("this", None)
    for args in (["eval", str(path), "-n", "8"], ["export", str(path), "--out", str(tmp_path / "e"), "--no-int8"]):
        result = run(*args)
        assert result.exit_code == 2 and "--model-factory this:x" in " ".join(result.output.split())
        assert "Beautiful is better than ugly" not in result.output and "this" not in sys.modules
