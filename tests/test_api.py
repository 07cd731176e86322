"""The Python API: objects in, objects out, and no process-wide state changed behind the caller's back."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import akd_edge as ae
from akd_edge.core.errors import UsageError
from akd_edge.data import ImageDataset
from akd_edge.models import create_model

SYNTH = "n=256,test=64,shape=1x8x8,classes=3"
TINY = {
    "run": {"name": "api", "seed": 0, "device": "cpu"},
    "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 64, "batch_size": 64, "eval_batch_size": 64},
    "model": {"name": "cnn-student"},
    "method": {"name": "at"},
    "train": {"epochs": 1, "attack": {"eps": 0.1, "steps": 2}},
    "eval": {"attack": {"eps": 0.1, "steps": 2}},
}


def _state() -> tuple[torch.Tensor, int, object]:
    return torch.get_rng_state(), torch.get_num_threads(), signal.getsignal(signal.SIGINT)


def test_distill_returns_the_best_model_and_leaves_process_state_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    rng, threads, handler = _state()
    model, summary = ae.train_teacher(TINY, run_dir=tmp_path / "run", threads=2)
    assert isinstance(model, torch.nn.Module) and not model.training
    assert summary["epochs"] == 1 and summary["run_dir"] == str(tmp_path / "run")
    assert (tmp_path / "run" / "best.pt").is_file()
    after_rng, after_threads, after_handler = _state()
    assert torch.equal(after_rng, rng), "the caller's global RNG was advanced or reseeded"
    assert (after_threads, after_handler) == (threads, handler)


def test_load_model_reads_a_run_a_checkpoint_and_the_builtin_teacher(tmp_path: Path) -> None:
    from akd_edge.core.errors import CheckpointError

    trained, _ = ae.train_teacher(TINY, run_dir=tmp_path / "run")
    x = torch.rand(4, 1, 8, 8)
    for source in (tmp_path / "run", tmp_path / "run" / "best.pt", str(tmp_path / "run")):
        model = ae.load_model(source)
        assert not model.training
        with torch.no_grad():
            assert torch.equal(model(x), trained(x))
    assert ae.load_model(tmp_path / "run", which="last")(x).shape == (4, 3)
    teacher = ae.load_model("builtin:fmnist-teacher")
    assert teacher(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(CheckpointError):
        ae.load_model(tmp_path / "missing")
    assert "load_model" in ae.__all__


def test_distill_takes_data_and_teacher_objects(tmp_path: Path) -> None:
    data = ae.load_data(TINY)
    assert data.num_classes == 3 and tuple(data.input_shape) == (1, 8, 8)
    teacher = create_model("cnn-student", num_classes=3, input_shape=(1, 8, 8), mean=data.mean, std=data.std)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    # A data folder that does not exist proves the given splits were used, not the recipe's.
    recipe = {**TINY, "data": {**TINY["data"], "name": "fashion-mnist", "data_dir": str(tmp_path / "none")}}
    model, summary = ae.distill(
        recipe, overrides=["method.name=akd"], run_dir=tmp_path / "s", data=data, teacher=teacher
    )
    assert summary["method"] == "akd"
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items()), "the teacher was trained"
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 3)


def test_distill_without_a_teacher_for_akd_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="teachers"):
        ae.distill(TINY, overrides=["method.name=akd"], run_dir=tmp_path / "s")


def test_evaluate_a_model_object_on_a_dataset_object() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 1, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 3, size=40)
    data = ImageDataset(images, labels)
    model = create_model("cnn-student", num_classes=3, input_shape=(1, 8, 8), mean=[0.5], std=[0.25]).eval()
    torch.manual_seed(5)
    rng_before = torch.get_rng_state()
    results = ae.evaluate(model, data, eps=0.05, norm="linf", attacks=["pgd"], steps=3, n=32, batch_size=16)
    assert torch.equal(torch.get_rng_state(), rng_before)
    clean, pgd = results["clean"], results["attacks"]["pgd"]
    assert clean["n"] == 32 and pgd["n"] == 32
    assert pgd["acc"] <= clean["acc"]
    assert pgd["settings"]["eps"] == 0.05 and pgd["settings"]["steps"] == 3
    with torch.no_grad():
        expected = (model(torch.from_numpy(images[:32]).float() / 255).argmax(1).numpy() == labels[:32]).mean()
    assert clean["acc"] == pytest.approx(expected)


def test_resume_continues_the_run_as_its_recipe_toml_says(tmp_path: Path) -> None:
    """The CLI's --resume is the API's: no recipe means the run's own; only RESUME_MAY_CHANGE may be overridden."""
    from akd_edge.core.errors import ConfigError

    ae.train_teacher(TINY, run_dir=tmp_path / "run")
    recipe_toml = (tmp_path / "run" / "recipe.toml").read_bytes()
    with pytest.raises(ConfigError, match=r"refused: train\.epochs"):
        ae.train_teacher(run_dir=tmp_path / "run", resume=True, overrides=["train.epochs=3"])
    model, summary = ae.train_teacher(run_dir=tmp_path / "run", resume=True, overrides=["run.threads=1"])
    assert summary["epochs"] == 1 and summary["run_dir"] == str(tmp_path / "run")
    assert (tmp_path / "run" / "recipe.toml").read_bytes() == recipe_toml
    with pytest.raises(UsageError, match="give the one to continue"):
        ae.distill(TINY, resume=True)


def test_train_teacher_refuses_a_distillation_method(tmp_path: Path) -> None:
    from akd_edge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="a teacher trains with at or trades"):
        ae.train_teacher(TINY, overrides=["method.name=akd"], run_dir=tmp_path / "t")
    assert not (tmp_path / "t").exists(), "refused before the run directory was claimed"


def test_evaluate_writes_the_eval_json_of_akd_edge_eval(tmp_path: Path) -> None:
    import json

    ae.train_teacher(TINY, run_dir=tmp_path / "run")
    quiet = {"steps": 2, "n": 32, "batch_size": 16, "calibration": False, "checks": False}
    results = ae.evaluate(tmp_path / "run", **quiet)
    assert results.path is None and results.report["results"] == results
    assert not (tmp_path / "run" / "eval.json").exists(), "writes nothing unless asked"
    written = ae.evaluate(tmp_path / "run", write=True, plots=False, **quiet)
    assert written.path == tmp_path / "run" / "eval.json"
    record = json.loads(written.path.read_text())
    assert (
        record["results"]["attacks"]["pgd"]["acc"]
        == written["attacks"]["pgd"]["acc"]
        == results["attacks"]["pgd"]["acc"]
    )
    with pytest.raises(UsageError, match="eval.json is written for a run directory"):
        ae.evaluate(
            ae.load_model(tmp_path / "run"), ae.load_test_data("synthetic", SYNTH), eps=0.1, norm="linf", write=True
        )


def test_evaluate_a_model_object_needs_data_and_threat() -> None:
    model = create_model("cnn-student", num_classes=3, input_shape=(1, 8, 8), mean=[0.5], std=[0.25])
    with pytest.raises(UsageError, match="eps and norm"):
        ae.evaluate(model)


def test_import_akd_edge_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, akd_edge; assert callable(akd_edge.distill); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_api_functions_keep_their_names_when_their_packages_load() -> None:
    """akd_edge.compress, .export and .verify are also packages: loading them must not replace the functions
    (the README's example calls ae.compress after ae.evaluate has loaded akd_edge.compress)."""
    import importlib

    for name in ("akd_edge.compress.command", "akd_edge.export.command", "akd_edge.verify.command", "akd_edge.report"):
        importlib.import_module(name)
    assert all(callable(getattr(ae, name)) for name in ae.__all__ if name != "__version__")
    assert ae.compress is ae.api.compress and ae.export is ae.api.export and ae.verify is ae.api.verify
    assert ae.report is ae.api.report
    importlib.import_module("akd_edge.run.command")
    assert callable(ae.run) and ae.run.__module__ == "akd_edge"


def test_the_package_exports_every_api_function() -> None:
    import akd_edge
    from akd_edge import api

    assert set(akd_edge.__all__) == {"__version__", "run", *api.__all__}


class _Reached(Exception):
    """Raised by a stand-in API function: the command got as far as calling it."""


COMMANDS = [
    (["train-teacher"], "train_teacher", {"resume": False}),
    (["distill", "--out", "runs/s"], "distill", {"run_dir": "runs/s"}),
    (["eval", "runs/s", "--attack", "aa-fast"], "evaluate", {"attacks": ("aa-fast",), "write": True}),
    (["eval", "runs/s", "--teacher-gap", "--n", "32"], "teacher_gap", {"n": 32, "attacks": ("pgd",)}),
    (["eval", "--dynamics", "runs/a", "runs/b", "--names", "a,b"], "dynamics", {"names": ["a", "b"]}),
    (["compress", "runs/s", "--ratio", "0.5"], "compress", {"ratio": 0.5}),
    (["export", "runs/s", "--no-int8"], "export", {"int8": False}),
    (["verify", "export/s", "--n", "200", "--model-factory", "m:f"], "verify", {"n": 200, "factory": "m:f"}),
    (["verify", "export/s", "--replay", "--threads", "1"], "replay", {"threads": 1}),
    (["report", "runs/s", "--title", "t"], "report", {"title": "t"}),
    (["run", "fmnist-quickstart", "--prune", "0.5", "--n", "200"], "run", {"out": None}),
]


@pytest.mark.parametrize(("args", "function", "expected"), COMMANDS, ids=[" ".join(c[0][:2]) for c in COMMANDS])
def test_each_command_calls_its_api_function(
    args: list[str], function: str, expected: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One implementation of each command: the CLI parses its flags and calls ``akd_edge.api.<function>`` (``run``:
    ``akd_edge.run``, built on them one floor up: its stages call these, tests/test_run_cmd.py)."""
    from click.testing import CliRunner

    from akd_edge.cli.main import cli

    calls: list[dict[str, object]] = []

    def reached(*positional: object, **keywords: object) -> None:
        calls.append(keywords)
        raise _Reached

    monkeypatch.setattr(ae if function == "run" else ae.api, function, reached)
    result = CliRunner().invoke(cli, args)
    assert isinstance(result.exception, _Reached), result.output
    (keywords,) = calls
    assert {key: keywords[key] for key in expected} == expected


def test_dynamics_analyses_a_run_and_refuses_labels_that_do_not_match(tmp_path: Path) -> None:
    record = np.array([[0, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=np.uint8)
    np.savez(tmp_path / "dynamics.npz", clean=np.ones_like(record), adv=record)
    report, path = ae.dynamics([tmp_path], names=["at"], plots=False)
    assert path == tmp_path / "dynamics.json" and report["names"] == ["at"]
    assert report["summaries"]["at"]["adv"]["sets"]["never_learned"]["count"] == 1
    with pytest.raises(UsageError, match="--names gives 2 labels for 1 runs"):
        ae.dynamics([tmp_path], names=["at", "akd"])
