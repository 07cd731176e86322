"""Training stops on NaN without saving it, checkpoints refuse code in one line, the library leaves process state.

Regression tests of issue 8 (items 2, 5, 6).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch
from click.testing import CliRunner

from akd_edge.cli.main import cli
from akd_edge.config import load_recipe
from akd_edge.core.env import torch_threads
from akd_edge.core.errors import CheckpointError
from akd_edge.models.checkpoint import load_checkpoint
from akd_edge.train.loop import Callbacks, Trainer, train_run
from akd_edge.train.stops import Diverged

SYNTH = "n=160,test=32,shape=1x8x8,classes=3,noise=0.25"


def tiny(**over: object) -> dict:
    """A recipe dict: cnn-student, AT, 2 short epochs (4 batches each) on synthetic data."""
    recipe = {
        "run": {"name": "tiny", "seed": 3},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 32, "batch_size": 32, "eval_batch_size": 64},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.25}},
        "method": {"name": "at"},
        "train": {"epochs": 2, "checkpoint_every": 0, "attack": {"eps": 0.1, "steps": 1}},
        "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
    }
    for key, value in over.items():
        section, field = key.split("__")
        recipe.setdefault(section, {})[field] = value
    return recipe


def _bytes(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _finite(ckpt: dict[str, Any]) -> bool:
    return all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())


# -- a diverged run stops and keeps its last good checkpoint ---------------------------------------------


class _Poison(Callbacks):
    """Turns the loss (``loss=True``) or a weight NaN during ``batch`` of ``epoch``; records the saved files."""

    def __init__(self, trainer: Trainer, epoch: int, batch: int, loss: bool) -> None:
        self.trainer, self.epoch, self.batch, self.loss = trainer, epoch, batch, loss
        self.current = 0
        self.saved: dict[str, bytes] = {}

    def on_epoch_start(self, epoch: int, epochs: int, total_batches: int, start_batch: int) -> None:
        self.current = epoch
        if epoch == self.epoch:
            self.saved = _bytes(self.trainer.run_dir)
            if self.loss:
                forward = self.trainer.task.forward
                step = {"n": 0}

                def poisoned(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
                    out = forward(x, y)
                    step["n"] += 1
                    if step["n"] == self.batch:
                        out = {**out, "loss": out["loss"] * float("nan")}
                    return out

                self.trainer.task.forward = poisoned

    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        if not self.loss and (self.current, batch) == (self.epoch, self.batch):
            with torch.no_grad():
                next(self.trainer.model.parameters()).fill_(float("inf"))


@pytest.mark.parametrize(("loss", "batch", "needle"), [(True, 2, "loss became nan in batch 2"), (False, 4, "weights")])
def test_a_non_finite_loss_or_weight_stops_the_run_keeping_the_last_good_checkpoint(
    tmp_path: Path, loss: bool, batch: int, needle: str
) -> None:
    trainer = Trainer(load_recipe(tiny(train__checkpoint_every=1)), tmp_path / "run", "student")
    trainer.cb = poison = _Poison(trainer, epoch=2, batch=batch, loss=loss)
    with pytest.raises(Diverged, match=needle) as stop:
        trainer.run()
    assert "epoch 2" in str(stop.value) and "last.pt" in str(stop.value)
    run = tmp_path / "run"
    for which in ("last", "best"):
        assert _finite(load_checkpoint(run, which))
    assert load_checkpoint(run, "best")["epoch"] == 1
    last = load_checkpoint(run, "last")
    assert (last["epoch"], last["batch"]) == (1, batch - 1)  # checkpoint_every=1: the batch before the NaN
    assert _bytes(run)["best.pt"] == poison.saved["best.pt"]
    assert "epoch-002.pt" not in {p.name for p in (run / "epochs").iterdir()}


def test_cli_exits_3_on_divergence_without_saving(tmp_path: Path) -> None:
    recipe = tiny(train__epochs=1)
    recipe["train"]["optim"] = {"lr": 1e6}  # the largest rate accepted: the weights blow up in the first epoch
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(recipe))
    result = CliRunner().invoke(cli, ["distill", "-r", str(path), "--out", str(tmp_path / "run")])
    assert result.exit_code == 3, result.output
    assert "training diverged" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "run").glob("*.pt"))
    # nothing worth keeping was made: the same folder takes a corrected run
    fixed = CliRunner().invoke(
        cli, ["distill", "-r", str(path), "--set", "train.optim.lr=0.01", "--out", str(tmp_path / "run")]
    )
    assert fixed.exit_code == 0, fixed.output


# -- checkpoints that need code are refused in one line -----------------------------------------------


class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned",))


def test_a_checkpoint_that_needs_code_is_refused_in_one_line(tmp_path: Path) -> None:
    torch.save({"format": "akd-edge/1", "model": {}, "arch": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(refused.value)
    assert "not a plain-tensor checkpoint" in message and "refused for safety" in message
    assert "\n" not in message and "weights_only" not in message


@pytest.mark.parametrize("data", [b"", b"PK\x03\x04 truncated"])
def test_a_corrupt_checkpoint_is_one_line(tmp_path: Path, data: bytes) -> None:
    (tmp_path / "bad.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match="corrupt, truncated or not a torch file") as refused:
        load_checkpoint(tmp_path / "bad.pt")
    assert "\n" not in str(refused.value)


# -- the library leaves process-wide state alone --------------------------------------------------------


class _Watch(Callbacks):
    def __init__(self) -> None:
        self.handlers: set[Any] = set()
        self.threads: set[int] = set()

    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        self.handlers.add(signal.getsignal(signal.SIGINT))
        self.threads.add(torch.get_num_threads())


def test_train_run_keeps_threads_global_rng_and_sigint(tmp_path: Path) -> None:
    recipe = load_recipe(tiny(train__epochs=1, run__threads=2))
    handler = signal.getsignal(signal.SIGINT)
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    watch = _Watch()
    train_run(recipe, tmp_path / "a", callbacks=watch)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.get_num_threads() == 1 and watch.threads == {1}
    assert signal.getsignal(signal.SIGINT) is handler and watch.handlers == {handler}
    # the weights depend on run.seed only, not on the caller's global RNG
    torch.rand(1000)
    train_run(recipe, tmp_path / "b")
    a, b = load_checkpoint(tmp_path / "a", "last")["model"], load_checkpoint(tmp_path / "b", "last")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ctrl_c_handler_and_threads_are_opt_in_and_restored(tmp_path: Path) -> None:
    handler = signal.getsignal(signal.SIGINT)
    watch = _Watch()
    with torch_threads(2):
        train_run(load_recipe(tiny(train__epochs=1)), tmp_path / "run", callbacks=watch, save_on_ctrl_c=True)
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == 1 and watch.threads == {2}
    assert len(watch.handlers) == 1 and handler not in watch.handlers
    assert signal.getsignal(signal.SIGINT) is handler


def test_totals_read_back_every_few_batches_match_per_batch_reads(tmp_path: Path) -> None:
    """On GPUs the loop reads its running totals only every ``sync_every`` batches (each read waits for the
    device); the epoch's loss and accuracy must be the same as reading after every batch."""

    class Seen(Callbacks):
        def __init__(self) -> None:
            self.batches: list[int] = []

        def on_batch(self, batch: int, stats: dict[str, float]) -> None:
            self.batches.append(batch)

    seen, epochs = {}, {}
    for sync_every in (1, 3):
        trainer = Trainer(load_recipe(tiny()), tmp_path / f"run{sync_every}", "student")
        trainer.sync_every, trainer.cb = sync_every, Seen()
        trainer.run()
        seen[sync_every] = trainer.cb.batches
        records = map(json.loads, (tmp_path / f"run{sync_every}" / "metrics.jsonl").read_text().splitlines())
        epochs[sync_every] = [r for r in records if r["event"] == "epoch"]
    assert seen[1] == [1, 2, 3, 4] * 2
    assert seen[3] == [3, 4] * 2  # every third batch and the epoch's last
    for a, b in zip(epochs[1], epochs[3], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12) and a["acc"] == b["acc"]


def test_a_nan_found_at_a_later_read_names_the_batches_it_may_be_in(tmp_path: Path) -> None:
    trainer = Trainer(load_recipe(tiny()), tmp_path / "run", "student")
    trainer.sync_every = 3
    trainer.cb = _Poison(trainer, epoch=1, batch=2, loss=True)
    with pytest.raises(Diverged, match="loss became nan in batches 1-3 of epoch 1"):
        trainer.run()
