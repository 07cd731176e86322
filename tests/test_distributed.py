"""Data-parallel runs under torchrun (gloo on CPU): the same weights and numbers as one process, rank 0 alone
writes, a killed rank stops the others and the run resumes with the same or another world size.

The end-to-end tests launch ``python -m torch.distributed.run --standalone --nproc_per_node 2`` on a model
without BatchNorm and attacks without random starts: then the only difference from one process is the order
of float additions (each rank sums its shard's gradients, then DDP averages the ranks'). With BatchNorm each
rank normalises with its own shard's statistics (documented in docs/DISTRIBUTED.md); with random starts each
rank draws its own. The tests that need no second process use a stand-in for the process group.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import torch

from akd_edge.attacks.suite import AttackSpec
from akd_edge.config import load_recipe
from akd_edge.core.distributed import Group
from akd_edge.core.errors import ConfigError
from akd_edge.data import iterate_batches, load_dataset, load_test_split, shard_bounds
from akd_edge.evaluation.engine import evaluate_batches, sharded
from akd_edge.models import create_model
from akd_edge.models.checkpoint import load_checkpoint
from akd_edge.train.loop import Trainer, train_run

MODULE = "akd_dist_nets"
FACTORY = f"{MODULE}:flat"
NET = """
    import time

    from torch import nn


    class Flat(nn.Module):
        \"\"\"Conv, ReLU, global pool, linear: no BatchNorm, so shards and whole batches compute the same.\"\"\"

        def __init__(self, num_classes, input_shape, width, delay):
            super().__init__()
            self.conv = nn.Conv2d(input_shape[0], width, 3, padding=1)
            self.fc = nn.Linear(width, num_classes)
            self.delay = delay

        def forward(self, x):
            if self.delay:
                time.sleep(self.delay)  # a slow model, so that a test can kill a rank in mid-run
            return self.fc(self.conv(x).relu().mean((2, 3)))


    def flat(num_classes, input_shape=(1, 8, 8), width=8, delay=0.0):
        return Flat(num_classes, input_shape, width, delay)
"""
SYNTH = "n=192,test=64,shape=1x8x8,classes=4,noise=0.25"
EXACT_ATTACK = {"eps": 0.1, "steps": 2, "random_start": False}


def recipe(**train: Any) -> dict[str, Any]:
    """Train on 144 images in global batches of 25: shards of 12 and 13 images, a last batch of 19 (9 and 10)."""
    return {
        "run": {"name": "dist", "seed": 3},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 48, "batch_size": 25, "eval_batch_size": 64},
        "model": {"name": FACTORY},
        "method": {"name": "at"},
        "train": {
            "epochs": 2,
            "checkpoint_every": 3,
            "amp": "none",
            "channels_last": "off",
            "attack": EXACT_ATTACK,
            **train,
        },
        "eval": {"val_samples": 32, "attack": {**EXACT_ATTACK, "steps": 3}},
    }


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder holding the user's model module (importable here and, through PYTHONPATH, by the ranks)."""
    folder = tmp_path_factory.mktemp("dist")
    (folder / f"{MODULE}.py").write_text(textwrap.dedent(NET))
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop(MODULE, None)


def torchrun(workdir: Path, *args: str, nproc: int = 2, wait: bool = True) -> Any:
    """``torchrun --standalone --nproc_per_node nproc -m akd_edge ARGS`` in ``workdir`` (one thread per rank)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]),
        "AKD_EDGE_DIST_TIMEOUT": "60",
    }
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    cmd += ["-m", "akd_edge", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=240)


def write_recipe(workdir: Path, name: str, data: dict[str, Any]) -> Path:
    path = workdir / f"{name}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def without_seconds(results: dict[str, Any]) -> dict[str, Any]:
    """Evaluation results without the timings (each attack's and the total)."""
    attacks = {name: {k: v for k, v in entry.items() if k != "seconds"} for name, entry in results["attacks"].items()}
    return {**{k: v for k, v in results.items() if k != "seconds"}, "attacks": attacks}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def two_rank_run(workdir: Path) -> tuple[Path, Any]:
    """A 2-rank train-teacher run of :func:`recipe`, and the finished process."""
    path = write_recipe(workdir, "exact", recipe())
    result = torchrun(workdir, "train-teacher", "-r", path.name, "--out", "runs/two")
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "runs" / "two", result


# -- shards --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shards_are_disjoint_parts_of_the_single_process_batches(world: int) -> None:
    splits = load_dataset(load_recipe(recipe()).data, seed=3)
    options = {"shuffle": True, "seed": 5, "epoch": 2, "augment": True, "start_batch": 1}
    whole = list(iterate_batches(splits.train, 25, **options))
    shards = [list(iterate_batches(splits.train, 25, shard=(rank, world), **options)) for rank in range(world)]
    for batch, (x, y, idx) in enumerate(whole):
        parts = [shard[batch] for shard in shards]
        assert torch.equal(torch.cat([p[2] for p in parts]), idx)  # contiguous rows, in rank order
        assert torch.equal(torch.cat([p[0] for p in parts]), x)  # augmented as in the whole batch
        assert torch.equal(torch.cat([p[1] for p in parts]), y)
        sizes = [len(p[2]) for p in parts]
        assert max(sizes) - min(sizes) <= 1
    assert [shard_bounds(10, r, 4) for r in range(4)] == [(0, 2), (2, 5), (5, 7), (7, 10)]


class _StandIn(Group):
    """A process group of one process pretending to be rank ``rank`` of ``world``: all_gather returns the
    payloads recorded from the other ranks' passes (the rank's own where none was recorded)."""

    def __init__(self, rank: int, world: int, recorded: dict[int, Any]) -> None:
        super().__init__(rank=rank, world=world)
        object.__setattr__(self, "recorded", recorded)

    def all_gather(self, obj: Any) -> list[Any]:
        self.recorded[self.rank] = obj
        return [self.recorded.get(rank, obj) for rank in range(self.world)]


def test_a_sharded_evaluation_gives_the_single_process_results() -> None:
    torch.manual_seed(0)
    model = create_model("cnn-student", num_classes=4, input_shape=(1, 8, 8), mean=0.5, std=0.25).eval()
    dataset, _ = load_test_split("synthetic", "n=64,test=45,shape=1x8x8,classes=4,noise=0.25,seed=1")
    specs = [AttackSpec("pgd", eps=0.2, steps=3, seed=4)]
    options = {"curve": [0.0, 0.1], "curve_spec": specs[0], "calibration": True, "checks": True}
    single = evaluate_batches(model, iterate_batches(dataset, 8), specs, total=len(dataset), **options)
    recorded: dict[int, Any] = {}
    for rank in (2, 1, 0):  # rank 0 last: it gathers what the others recorded
        with sharded(_StandIn(rank, 3, recorded)):
            parts = evaluate_batches(model, iterate_batches(dataset, 8), specs, total=len(dataset), **options)
    assert without_seconds(parts.results) == without_seconds(single.results)
    assert all(torch.equal(parts.flags[k], single.flags[k]) for k in single.flags)


def test_a_last_batch_smaller_than_the_world_and_cpu_sync_bn_are_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("akd_edge.train.loop.current", lambda: Group(rank=0, world=2))
    small = recipe()
    small["data"]["batch_size"] = 143  # 144 images: a last batch of 1 image for 2 ranks
    with pytest.raises(ConfigError, match="last batch of an epoch has 1 images"):
        Trainer(load_recipe(small), workdir / "never", "teacher")
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on GPUs only"):
        Trainer(load_recipe(recipe(sync_bn=True)), workdir / "never", "teacher")
    assert not (workdir / "never").exists()


# -- torchrun, end to end -----------------------------------------------------------------------------------
def test_two_ranks_reach_the_single_process_weights_and_only_rank_0_writes(two_rank_run, workdir: Path) -> None:
    run, result = two_rank_run
    assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*")) == [
        ".akd-edge.json",
        "best.pt",
        "epochs",
        "epochs/epoch-001.pt",
        "epochs/epoch-002.pt",
        "last.pt",
        "metrics.jsonl",
        "recipe.toml",
        "summary.json",
    ]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["event"], r["epoch"]) for r in records] == [("epoch", 1), ("eval", 1), ("epoch", 2), ("eval", 2)]
    assert result.stderr.count("run directory runs/two") == 1  # rank 1 prints nothing
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2
    last = load_checkpoint(run, "last")
    assert last["world_size"] == 2 and len(last["rng_ranks"]) == 2

    single = train_run(load_recipe(recipe()), workdir / "runs" / "one", role="teacher")
    assert max_diff(last["model"], load_checkpoint(workdir / "runs" / "one", "last")["model"]) < 1e-5
    assert single["best"] == json.loads((run / "summary.json").read_text())["best"]  # validation reduced
    singles = [json.loads(line) for line in (workdir / "runs" / "one" / "metrics.jsonl").read_text().splitlines()]
    for ours, theirs in zip(records, singles, strict=True):
        if ours["event"] == "epoch":  # loss and accuracy summed over the ranks: the global batch's
            assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-6) and ours["acc"] == theirs["acc"]
        else:
            assert {k: ours[k] for k in ("clean_acc", "robust_acc", "n")} == {
                k: theirs[k] for k in ("clean_acc", "robust_acc", "n")
            }


def test_eval_shares_its_attacks_and_gives_the_single_process_report(two_rank_run, workdir: Path) -> None:
    run, _ = two_rank_run
    args = ["--model-factory", FACTORY, "-n", "16", "--batch-size", "4", "--steps", "3", "--no-plots"]
    args += ["--attack", "pgd,aa-fast,square", "--queries", "20", "--eps-curve", "0,0.1"]
    result = torchrun(workdir, "eval", str(run), *args, "--out", "eval-two")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (workdir / "eval-two").iterdir()) == ["eval.json"]
    from click.testing import CliRunner

    from akd_edge.cli.main import cli

    single = CliRunner().invoke(cli, ["eval", str(run), *args, "--out", str(workdir / "eval-one")])
    assert single.exit_code == 0, single.output

    def numbers(folder: str) -> dict[str, Any]:
        return without_seconds(json.loads((workdir / folder / "eval.json").read_text())["results"])

    assert numbers("eval-two") == numbers("eval-one")  # AutoAttack included, calibration bit for bit


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The pid of the process of ``rank`` that torchrun (``launcher``) started, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, grew = {launcher.pid}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        family, grew = family | more, bool(more)
    for pid in family - {launcher.pid}:
        try:
            environ = (Path("/proc") / str(pid) / "environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if f"RANK={rank}" in environ.split("\0"):
            return pid
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_a_killed_rank_stops_the_other_and_the_run_resumes_with_any_world_size(workdir: Path) -> None:
    slow = recipe(epochs=4)
    slow["model"]["kwargs"] = {"delay": 0.01}
    path = write_recipe(workdir, "slow", slow)
    run = workdir / "runs" / "killed"
    launcher = torchrun(workdir, "train-teacher", "-r", path.name, "--out", "runs/killed", wait=False)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(launcher, 1)
        assert victim is not None and launcher.poll() is None, "the run ended before a rank could be killed"
        os.kill(victim, signal.SIGKILL)
        _, err = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and re.search(r"rank 0: (lost contact|stopped by SIGTERM)", ours[0]), err[-3000:]
    saved = load_checkpoint(run, "last")  # intact, and resumable
    assert saved["world_size"] == 2 and saved["epoch"] < 4

    copy = workdir / "runs" / "killed-copy"
    shutil.copytree(run, copy)
    resumed = torchrun(workdir, "train-teacher", "--resume", "runs/killed", "--allow-code")  # its model is a factory
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    train_run(load_recipe(slow), copy, resume=True, role="teacher")  # the same run continued by one process
    reference = workdir / "runs" / "uninterrupted"
    train_run(load_recipe(slow), reference, role="teacher")
    expected = load_checkpoint(reference, "last")["model"]
    for folder in (run, copy):
        assert load_checkpoint(folder, "last")["epoch"] == 4
        assert max_diff(load_checkpoint(folder, "last")["model"], expected) < 1e-5
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["event"] == "eval"] == [1, 2, 3, 4]


def test_a_bad_recipe_reads_once_and_exits_2_on_every_rank(workdir: Path) -> None:
    path = write_recipe(workdir, "exact", recipe())
    result = torchrun(workdir, "train-teacher", "-r", path.name, "--set", "train.epochs=0", "--out", "runs/bad")
    assert result.returncode != 0
    ours = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "train.epochs" in ours[0], result.stderr[-3000:]
    assert "exitcode  : 2" in result.stderr  # torchrun's summary (the rank that exits last may get its SIGTERM)
    assert not re.search(r'File "[^"]*akd_edge', result.stderr)  # no traceback from akd-edge, only torchrun's
    assert not (workdir / "runs" / "bad").exists()


def test_distill_with_batchnorm_and_a_teacher_under_torchrun(two_rank_run, workdir: Path) -> None:
    teacher, _ = two_rank_run
    student = recipe()
    student["model"] = {"name": "cnn-student", "kwargs": {"width": 0.25}}
    student["method"] = {"name": "akd"}
    student["teachers"] = [{"path": str(teacher), "factory": FACTORY}]
    path = write_recipe(workdir, "student", student)
    result = torchrun(workdir, "distill", "-r", path.name, "--out", "runs/student")
    assert result.returncode == 0, result.stderr[-3000:]
    best = load_checkpoint(workdir / "runs" / "student", "best")
    assert best["val"]["n"] == 32 and 0 <= best["val"]["robust_acc"] <= best["val"]["clean_acc"] <= 1
    running = {k: v for k, v in best["model"].items() if k.endswith("running_var")}
    assert running and all(torch.isfinite(v).all() and not torch.equal(v, torch.ones_like(v)) for v in running.values())


def test_compress_fine_tunes_under_torchrun(two_rank_run, workdir: Path) -> None:
    run, _ = two_rank_run
    args = ["compress", str(run), "--model-factory", FACTORY, "--ratio", "0.5", "--round-to", "2", "--steps", "1"]
    args += ["--epochs", "1", "--autoattack", "none", "-n", "32"]
    result = torchrun(workdir, *args, "--out", "runs/pruned")
    assert result.returncode == 0, result.stderr[-3000:]
    out = workdir / "runs" / "pruned"
    report = json.loads((out / "report.json").read_text())
    assert report["after"]["params"] < report["before"]["params"]
    steps = [json.loads(line) for line in (out / "step-1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in steps] == ["epoch", "eval"]  # one writer
    assert np.isfinite(report["after"]["pgd_acc"])
