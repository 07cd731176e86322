"""The training loop and the train-teacher / distill commands, end to end on synthetic data."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from akd_edge.cli.main import cli
from akd_edge.config import load_recipe
from akd_edge.models.checkpoint import load_checkpoint, load_model
from akd_edge.train.loop import Callbacks, Trainer, train_run
from akd_edge.train.stops import Interrupted

SYNTH = "n=192,test=64,shape=1x12x12,classes=3,noise=0.25"


def tiny(**over: object) -> dict:
    """A recipe dict that trains cnn-student for 2 short epochs on synthetic data."""
    recipe = {
        "run": {"name": "tiny", "seed": 3},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 48, "batch_size": 32, "eval_batch_size": 64},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": "at"},
        "train": {"epochs": 2, "checkpoint_every": 2, "attack": {"eps": 0.1, "steps": 2}},
        "eval": {"val_samples": 32, "attack": {"eps": 0.1, "steps": 3}},
    }
    for key, value in over.items():
        section, field = key.split("__")
        recipe.setdefault(section, {})[field] = value
    return recipe


def _weights(run_dir: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir, which)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_average_rate_weighs_each_epoch_by_its_time() -> None:
    """The summary's images/s is the run's (all images over all time), not the last epoch's rate."""
    from akd_edge.train.records import average_rate

    epochs = [{"images_per_s": 100.0, "time_s": 90.0}, {"images_per_s": 1000.0, "time_s": 10.0}]
    assert average_rate(epochs) == pytest.approx((9000 + 10000) / 100)
    assert average_rate([]) == 0.0


def test_run_directory_contents_and_early_stopping(tmp_path: Path) -> None:
    summary = train_run(load_recipe(tiny()), tmp_path / "run", role="teacher")
    run = tmp_path / "run"
    for name in ("recipe.toml", "metrics.jsonl", "summary.json", "best.pt", "last.pt", "epochs/epoch-002.pt"):
        assert (run / name).is_file(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2]
    best_epoch = max(evals, key=lambda r: (r["robust_acc"], -r["epoch"]))["epoch"]
    assert summary["best"]["epoch"] == best_epoch == load_checkpoint(run, "best")["epoch"]
    for r in evals:
        assert 0 <= r["robust_acc"] <= r["clean_acc"] <= 1
    # The resolved recipe reloads to the same configuration.
    assert load_recipe(tomllib.loads((run / "recipe.toml").read_text())) == load_recipe(tiny())
    # best.pt carries no resume state; last.pt does.
    assert "optimizer" not in load_checkpoint(run, "best") and "optimizer" in load_checkpoint(run, "last")


class _KillAt(Callbacks):
    """Simulates a crash (or Ctrl-C) when a given batch of a given epoch finishes."""

    def __init__(self, trainer: Trainer | None, epoch: int, batch: int, ctrl_c: bool = False) -> None:
        self.trainer, self.epoch, self.batch, self.ctrl_c = trainer, epoch, batch, ctrl_c
        self.current = 0

    def on_epoch_start(self, epoch: int, epochs: int, total_batches: int, start_batch: int) -> None:
        self.current = epoch

    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        if (self.current, batch) == (self.epoch, self.batch):
            if self.ctrl_c:
                self.trainer.sigint.requested = True
            else:
                raise RuntimeError("killed")


def test_resume_after_kill_matches_uninterrupted_run(tmp_path: Path) -> None:
    recipe = load_recipe(tiny(data__augment=True))
    train_run(recipe, tmp_path / "full")
    with pytest.raises(RuntimeError, match="killed"):
        train_run(recipe, tmp_path / "killed", callbacks=_KillAt(None, epoch=2, batch=3))
    assert load_checkpoint(tmp_path / "killed", "last")["batch"] == 2  # checkpoint_every=2
    summary = train_run(recipe, tmp_path / "killed", resume=True)
    assert summary["epochs"] == 2
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "killed"))
    full_lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    resumed_lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert len(full_lines) == len(resumed_lines) == 4


def test_ctrl_c_saves_and_resumes_to_the_same_weights(tmp_path: Path) -> None:
    recipe = load_recipe(tiny(train__checkpoint_every=0))
    train_run(recipe, tmp_path / "full")
    trainer = Trainer(recipe, tmp_path / "stopped", "student")
    trainer.cb = _KillAt(trainer, epoch=1, batch=3, ctrl_c=True)
    with pytest.raises(Interrupted):
        trainer.run()
    assert load_checkpoint(tmp_path / "stopped", "last")["batch"] == 3
    train_run(recipe, tmp_path / "stopped", resume=True)
    assert _same(_weights(tmp_path / "full"), _weights(tmp_path / "stopped"))


def test_starting_over_an_existing_run_is_refused(tmp_path: Path) -> None:
    recipe = load_recipe(tiny(train__epochs=1))
    train_run(recipe, tmp_path / "run")
    with pytest.raises(Exception, match="--resume"):
        train_run(recipe, tmp_path / "run")


def test_dynamics_are_recorded_per_sample_and_epoch(tmp_path: Path) -> None:
    import numpy as np

    train_run(load_recipe(tiny(train__record_dynamics=True)), tmp_path / "run")
    with np.load(tmp_path / "run" / "dynamics.npz") as arrays:
        assert arrays["clean"].shape == arrays["adv"].shape == (2, 192 - 48)
        assert set(np.unique(arrays["clean"])) <= {0, 1}
        assert arrays["clean"].sum() >= arrays["adv"].sum()  # robust correct is rarer than clean correct


def _write(path: Path, recipe: dict) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(recipe))
    return path


def test_cli_train_teacher_then_distill_ensemble(tmp_path: Path) -> None:
    runner = CliRunner()
    teacher_recipe = _write(tmp_path / "teacher.toml", tiny(run__name="teacher", train__epochs=1))
    result = runner.invoke(cli, ["train-teacher", "-r", str(teacher_recipe), "--out", str(tmp_path / "t")])
    assert result.exit_code == 0, result.output
    # off a terminal, a progress line every tenth of an epoch (5 batches here: one each), then the next step
    assert "epoch 1/1 batch 5/5  loss" in result.output
    assert f"next: akd-edge distill --teacher {tmp_path / 't'}" in result.output
    student = tiny(run__name="student", method__name="akd", train__epochs=1)
    student["teachers"] = [{"path": str(tmp_path / "t"), "weight": 2.0}, {"path": str(tmp_path / "t"), "which": "1"}]
    result = runner.invoke(
        cli, ["distill", "-r", str(_write(tmp_path / "s.toml", student)), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert f"next: akd-edge export {tmp_path / 's'}" in result.output
    model, meta = load_model(tmp_path / "s")
    assert meta["role"] == "student" and meta["recipe"]["method"]["name"] == "akd"
    assert model(torch.rand(2, 1, 12, 12)).shape == (2, 3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["distill", "-r", "no-such-recipe"], "not found"),
        (["distill", "--set", "train.epoch=3"], "unknown key 'train.epoch'"),
        (["train-teacher", "--set", "method.name=akd"], "a teacher trains with at or trades"),
    ],
)
def test_cli_usage_errors_exit_2_without_traceback(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output


def test_distill_without_teacher_is_a_usage_error(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "s.toml", tiny(method__name="akd"))
    result = CliRunner().invoke(cli, ["distill", "-r", str(recipe), "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "[[teachers]]" in result.output


def test_cli_data_dir_flag_overrides_the_recipe(tmp_path: Path) -> None:
    recipe = tiny(run__name="flags", train__epochs=1)
    recipe["data"]["data_dir"] = "n=10,test=4"  # too small for val_size=48: must be replaced by --data-dir
    path = _write(tmp_path / "r.toml", recipe)
    args = ["train-teacher", "-r", str(path), "--out", str(tmp_path / "r"), "--data-dir", SYNTH, "--device", "cpu"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    saved = tomllib.loads((tmp_path / "r" / "recipe.toml").read_text())
    assert saved["data"]["data_dir"] == SYNTH and saved["run"]["device"] == "cpu"
