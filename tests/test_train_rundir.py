"""Run directories: one process per run, new runs only in empty folders, resume only of a run, with its recipe.

Regression tests of issue 8 (items 1, 3, 4, 5): each would fail on the loop before run directories were
locked, marked and checked.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from akd_edge.cli.main import cli
from akd_edge.config import load_recipe
from akd_edge.core.errors import CheckpointError, ConfigError, UsageError
from akd_edge.core.files import LOCK, MARK, FolderInUse, FolderLock, marked_kind
from akd_edge.models.checkpoint import load_checkpoint
from akd_edge.train.loop import Callbacks, train_run
from akd_edge.train.rundir import claim_run_dir, new_run_dir, open_run_dir

SYNTH = "n=160,test=32,shape=1x8x8,classes=3,noise=0.25"


def tiny(tmp_path: Path, **over: object) -> dict:
    """A recipe dict: cnn-student, AT, 1 short epoch on synthetic data, default runs under ``tmp_path/runs``."""
    recipe = {
        "run": {"name": "tiny", "seed": 3, "out_dir": str(tmp_path / "runs")},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 32, "batch_size": 32, "eval_batch_size": 64},
        "model": {"name": "cnn-student", "kwargs": {"width": 0.25}},
        "method": {"name": "at"},
        "train": {"epochs": 1, "checkpoint_every": 2, "attack": {"eps": 0.1, "steps": 1}},
        "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
    }
    for key, value in over.items():
        section, field = key.split("__")
        recipe.setdefault(section, {})[field] = value
    return recipe


def _recipe_file(tmp_path: Path, **over: object) -> str:
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(tiny(tmp_path, **over)))
    return str(path)


def _invoke(*args: str) -> tuple[int, str]:
    """Exit code and output, with rich's line wrapping undone."""
    result = CliRunner().invoke(cli, list(args))
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch run (copy it before changing it)."""
    root = tmp_path_factory.mktemp("finished")
    train_run(load_recipe(tiny(root)), root / "run")
    return root / "run"


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# -- one process per run directory ---------------------------------------------------------------------


def test_out_in_use_by_another_run_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with FolderLock(out, "run directory"):  # another process's run (flock conflicts within a process too)
        code, output = _invoke("distill", "-r", _recipe_file(tmp_path), "--out", str(out))
        assert code == 2
        assert "in use" in output
        assert {p.name for p in out.iterdir()} == {LOCK}


def test_resume_while_the_run_still_runs_exits_2(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    with FolderLock(run, "run directory"):
        code, output = _invoke("distill", "--resume", str(run))
        assert code == 2 and "in use" in output
    assert _snapshot(run) == before


def test_default_name_skips_folders_in_use_or_not_ours(tmp_path: Path) -> None:
    recipe = load_recipe(tiny(tmp_path))
    runs = tmp_path / "runs"
    (runs / "tiny-2").mkdir(parents=True)
    (runs / "tiny-2" / "notes.txt").write_text("mine")
    with claim_run_dir(recipe) as first:
        assert first.path == runs / "tiny" and marked_kind(first.path) == "run"
        assert new_run_dir(recipe) == runs / "tiny-3"  # in use, and not ours: skipped
        with claim_run_dir(recipe) as second:  # two runs started at once never share a folder
            assert second.path == runs / "tiny-3"
            with pytest.raises(FolderInUse):
                claim_run_dir(recipe, runs / "tiny-3")
    assert (runs / "tiny-2" / "notes.txt").read_text() == "mine"
    assert not (runs / "tiny-2" / MARK).exists()
    assert not (runs / "tiny" / LOCK).exists()  # released on exit


def test_a_stale_lock_of_a_killed_run_does_not_block(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text("pid 999999\n")  # left by kill -9: no process holds its flock
    with claim_run_dir(load_recipe(tiny(tmp_path)), out) as run:
        assert run.path == out


# -- a new run needs an empty folder --------------------------------------------------------------------


def test_out_into_a_user_folder_is_refused_and_untouched(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "recipe.toml").write_text("# my own notes\n")
    code, output = _invoke("distill", "-r", _recipe_file(tmp_path), "--out", str(out))
    assert code == 2
    assert "not empty and is not an akd-edge run" in output
    assert {p.name for p in out.iterdir()} == {"recipe.toml"}
    assert (out / "recipe.toml").read_text() == "# my own notes\n"


def test_out_into_a_finished_run_without_last_pt_is_refused(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    (run / "last.pt").unlink()
    before = _snapshot(run)
    code, output = _invoke("distill", "-r", _recipe_file(tmp_path, train__epochs=2), "--out", str(run))
    assert code == 2
    assert "finished akd-edge run" in output
    assert _snapshot(run) == before  # best.pt, epochs/, recipe.toml kept


def test_out_into_a_run_with_last_pt_points_to_resume(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    with pytest.raises(UsageError, match="--resume"):
        claim_run_dir(load_recipe(tiny(tmp_path)), run)


def test_a_run_that_stopped_before_its_first_checkpoint_may_start_again(tmp_path: Path) -> None:
    recipe = load_recipe(tiny(tmp_path))
    out = tmp_path / "out"
    with claim_run_dir(recipe, out):
        (out / "recipe.toml").write_text("run = 1\n")
        (out / ".last.pt.abc.tmp").write_bytes(b"half")
    with claim_run_dir(recipe, out):
        assert not (out / ".last.pt.abc.tmp").exists()


def test_unwritable_out_exits_2_before_loading_data(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a folder cannot be made inside a file, not even by root
    # data_dir too small for val_size: had the data loaded first, this would be the error
    recipe = _recipe_file(tmp_path, data__data_dir="n=10,test=4")
    for args in (["--out", str(blocker / "run")], ["--set", f"run.out_dir={json.dumps(str(blocker / 'runs'))}"]):
        for command in ("distill", "train-teacher"):
            code, output = _invoke(command, "-r", recipe, *args)
            assert code == 2, output
            assert "cannot write to" in output and "val_size" not in output


def test_read_only_out_exits_2(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        code, output = _invoke("distill", "-r", _recipe_file(tmp_path), "--out", str(parent / "run"))
    finally:
        parent.chmod(0o700)
    assert code == 2 and "cannot write to" in output


# -- resume continues the run as it was -----------------------------------------------------------------


def test_resume_refuses_overrides_and_keeps_recipe_toml(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    before = _snapshot(run)
    for extra, refused in (
        (["--set", "train.epochs=3"], "train.epochs"),
        (["--teacher", str(run)], "--teacher"),
        (["--data-dir", SYNTH], "data.data_dir"),
        (["--out", str(tmp_path / "x")], "--out"),
        (["-r", "fmnist-quickstart"], "--recipe"),
    ):
        code, output = _invoke("distill", "--resume", str(run), *extra)
        assert code == 2, output
        assert f"refused: {refused}" in output
    assert _snapshot(run) == before
    # the allowed ones still work: the run is complete, so resuming it only writes its summary again
    code, output = _invoke("distill", "--resume", str(run), "--device", "cpu", "--set", "run.threads=1")
    assert code == 0, output
    assert (run / "recipe.toml").read_bytes() == before["recipe.toml"]


def test_library_resume_with_a_changed_recipe_is_refused(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        train_run(load_recipe(tiny(tmp_path, train__epochs=3)), run, resume=True)
    assert load_checkpoint(run, "last")["epoch"] == 1


def test_resume_needs_a_run_with_last_pt(finished: Path, tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(finished / "recipe.toml", user / "recipe.toml")
    code, output = _invoke("distill", "--resume", str(user))
    assert code == 2 and "no last.pt" in output
    assert not (user / MARK).exists()


def test_a_run_from_before_the_mark_resumes_and_is_marked(finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    (run / MARK).unlink()
    with open_run_dir(run):
        assert marked_kind(run) == "run"
    (run / MARK).unlink()
    (run / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        open_run_dir(run)
    assert not (run / LOCK).exists()


class _Kill(Callbacks):
    def __init__(self) -> None:
        self.epoch = 0

    def on_epoch_start(self, epoch: int, epochs: int, total_batches: int, start_batch: int) -> None:
        self.epoch = epoch

    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        if (self.epoch, batch) == (2, 3):
            raise RuntimeError("killed")


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run killed in epoch 2 after its batch-2 checkpoint (copy it before changing it)."""
    root = tmp_path_factory.mktemp("killed")
    with pytest.raises(RuntimeError, match="killed"):
        train_run(load_recipe(tiny(root, train__epochs=2)), root / "run", callbacks=_Kill())
    return root / "run"


def test_corrupt_metrics_line_is_named_and_the_checkpoint_kept(killed: Path, tmp_path: Path) -> None:
    run = _copy(killed, tmp_path)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n{garbage\n" + "\n".join(lines[1:]) + "\n")
    before = _snapshot(run)
    code, output = _invoke("distill", "--resume", str(run))
    assert code == 2
    assert "metrics.jsonl line 2" in output
    assert _snapshot(run) == before


def test_a_metrics_line_cut_off_by_a_kill_is_dropped(killed: Path, tmp_path: Path) -> None:
    run = _copy(killed, tmp_path)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"event": "epoch", "epo')  # the kill came while the next epoch's line was written
    summary = train_run(load_recipe(tiny(tmp_path, train__epochs=2)), run, resume=True)
    assert summary["epochs"] == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 1, 2, 2]


def test_orphaned_temp_files_are_removed_on_resume(killed: Path, tmp_path: Path) -> None:
    run = _copy(killed, tmp_path)
    orphans = [run / ".last.pt.k3j2.tmp", run / ".metrics.jsonl.x.tmp", run / "epochs" / ".epoch-002.pt.q.tmp"]
    for path in orphans:
        path.write_bytes(b"half-written")
    (run / "notes.tmp").write_text("the user's")  # not a temp-file name of ours: kept
    train_run(load_recipe(tiny(tmp_path, train__epochs=2)), run, resume=True)
    assert not any(path.exists() for path in orphans)
    assert (run / "notes.tmp").exists()
    assert not list(run.glob(".*.tmp"))


def test_recipe_words_may_change_under_a_run_but_not_its_settings() -> None:
    from akd_edge.config import to_dict
    from akd_edge.train.rundir import recipe_changes

    saved = to_dict(load_recipe("fmnist-akd"))
    edited = json.loads(json.dumps(saved))
    edited["description"] = "reworded"
    edited["expected"]["note"] = "measured since"
    assert recipe_changes(saved, edited) == []
    edited["method"]["temperature"] = saved["method"]["temperature"] + 1
    assert recipe_changes(saved, edited) == ["method.temperature"]


# -- distill --reuse (make demo run twice) ---------------------------------------------------------------


def test_distill_reuse_reports_a_finished_run_and_resumes_an_interrupted_one(killed: Path, tmp_path: Path) -> None:
    recipe = _recipe_file(tmp_path)
    code, output = _invoke("distill", "--recipe", recipe, "--reuse")
    assert code == 0, output
    runs = tmp_path / "runs"
    assert (runs / "tiny" / "summary.json").is_file()
    before = _snapshot(runs)
    code, output = _invoke("distill", "--recipe", recipe, "--reuse")  # `make demo` again: no second training
    assert code == 0, output
    assert f"already trained: {runs / 'tiny'}" in output and f"next: akd-edge export {runs / 'tiny'}" in output
    assert "--out NEW_DIR" in output and sorted(p.name for p in runs.iterdir()) == ["tiny"]
    assert _snapshot(runs) == before, "a reused run is not touched"
    code, output = _invoke("distill", "--recipe", recipe)  # without --reuse a new run starts, as before
    assert code == 0 and (runs / "tiny-2" / "summary.json").is_file(), output

    # an interrupted run of the same recipe is resumed, not started again
    two = tmp_path / "two"
    two.mkdir()
    shutil.copytree(killed, two / "runs" / "tiny")
    recipe = _recipe_file(two, train__epochs=2)
    code, output = _invoke("distill", "--recipe", recipe, "--reuse")
    assert code == 0, output
    assert f"resuming the interrupted run {two / 'runs' / 'tiny'}" in output
    assert json.loads((two / "runs" / "tiny" / "summary.json").read_text())["epochs"] == 2
    assert sorted(p.name for p in (two / "runs").iterdir()) == ["tiny"]
