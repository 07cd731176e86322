"""`akd-edge run`: every stage once, skipped when current, and continued after a failure or a kill.

A tiny AKD recipe on synthetic data (one-epoch teacher, one- or two-epoch student, 48 test images, Square
with 10 queries, no transfer attack): the whole pipeline in about a minute on one core.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import akd_edge.api
from akd_edge.cli.main import cli
from akd_edge.config import load_recipe, to_dict
from akd_edge.core.errors import UsageError
from akd_edge.core.files import mark
from akd_edge.run import PipelineOptions, plan_stages
from akd_edge.run.ledger import PipelineState, digest
from akd_edge.run.root import claim_root, find_run, teacher_digests
from akd_edge.train.rundir import write_recipe

SYNTH = "n=256,test=48,shape=1x8x8,classes=4"
FAST = ["--n", "48", "--square-queries", "10", "--transfer", "none", "--calib", "32", "--threads", "1"]


def recipe_dict(out_dir: Path, teacher: Path | None, epochs: int = 1, **train: Any) -> dict[str, Any]:
    return {
        "run": {"name": "tiny", "seed": 0, "device": "cpu", "threads": 1, "out_dir": str(out_dir)},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 48, "batch_size": 64, "eval_batch_size": 64},
        "model": {"name": "cnn-student"},
        "method": {"name": "akd" if teacher else "at"},
        "train": {"epochs": epochs, "attack": {"eps": 0.1, "steps": 2}, **train},
        "eval": {"attack": {"eps": 0.1, "steps": 2}},
        "teachers": [{"path": str(teacher)}] if teacher else [],
    }


def write_toml(path: Path, recipe: dict[str, Any]) -> Path:
    write_recipe(load_recipe(recipe), path)
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch PGD-AT teacher run (a cnn-student: what matters here is the pipeline, not its accuracy)."""
    run = tmp_path_factory.mktemp("teacher") / "teacher"
    recipe = recipe_dict(run.parent, None)
    recipe["run"]["name"] = "teacher"
    akd_edge.api.train_teacher(recipe, run_dir=run)
    return run


def snapshot(*folders: Path) -> dict[str, tuple[str, int]]:
    """SHA-256 and mtime (ns) of every file under ``folders``: proof that nothing was rewritten."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.name != ".akd-edge.lock":
                found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
    return found


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["run", *args], env={"COLUMNS": "200"})


def stages(root: Path) -> dict[str, Any]:
    return json.loads((root / "pipeline.json").read_text())["stages"]


@pytest.fixture
def forbid(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``forbid(name, models)``: the API function ``name`` fails the test if called for one of ``models``."""

    def install(name: str, models: set[str] | None = None) -> list[str]:
        real = getattr(akd_edge.api, name)
        calls: list[str] = []

        def guarded(*args: Any, **kwargs: Any) -> Any:
            target = str(kwargs.get("out") or (args[1] if len(args) > 1 else args[0]))
            model = Path(target).name
            calls.append(model)
            if models is None or model in models:
                raise AssertionError(f"{name} ran again for {model}")
            return real(*args, **kwargs)

        monkeypatch.setattr(akd_edge.api, name, guarded)
        return calls

    yield install


def test_run_all_stages_then_a_failure_then_continue_without_redoing(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, forbid: Any
) -> None:
    recipe = write_toml(tmp_path / "tiny.toml", recipe_dict(tmp_path / "runs", teacher))
    root = tmp_path / "runs" / "tiny-pipeline"
    real_verify, real_export = akd_edge.api.verify, akd_edge.api.export
    # the int8 files are kept whatever their agreement with fp32: the tiny model's logits are nearly tied, so
    # whether int8 flips one of 48 decisions depends on the CPU's int8 kernels (the gate: tests/test_export.py)
    monkeypatch.setattr(akd_edge.api, "export", lambda *a, **k: real_export(*a, **k, keep_failed_int8=True))

    def failing_verify(folder: Any, **kwargs: Any) -> Any:
        if Path(folder).name == "tiny-pruned-0.5":
            raise RuntimeError("injected failure in the middle of verify")
        return real_verify(folder, **kwargs)

    monkeypatch.setattr(akd_edge.api, "verify", failing_verify)
    result = invoke(str(recipe), "--prune", "0.5", *FAST)
    assert isinstance(result.exception, RuntimeError), result.output
    done = stages(root)
    assert set(done) == {"distill", "compress/tiny-pruned-0.5", "export/tiny", "verify/tiny", "export/tiny-pruned-0.5"}
    run_dir = Path(done["distill"]["output"])
    assert run_dir == tmp_path / "runs" / "tiny", "the distillation lives where `akd-edge distill` puts it"
    assert (root / "export" / "tiny-pruned-0.5" / "model.int8.onnx").is_file(), "the failure deleted nothing"
    before = snapshot(run_dir, root / "compress", root / "export")

    # the second run finishes the failed stage and the rest; finished ones are neither rerun nor rewritten
    monkeypatch.setattr(akd_edge.api, "verify", real_verify)
    forbid("distill")
    forbid("compress")
    exported = forbid("export", {"tiny", "tiny-pruned-0.5"})
    verified = forbid("verify", {"tiny"})
    result = invoke(str(recipe), "--prune", "0.5", *FAST)
    assert result.exit_code == 0, result.output
    assert exported == ["teacher"] and verified == ["tiny-pruned-0.5", "teacher"]
    after = snapshot(run_dir, root / "compress", root / "export")
    rewritten = {path for path, entry in before.items() if after.get(path) != entry}
    pruned = root / "export" / "tiny-pruned-0.5"
    # verify writes its results and lists the replay file it adds in the folder's manifest (the mark)
    assert rewritten <= {str(pruned / name) for name in ("report.json", "MODEL_CARD.md", ".akd-edge.json")}, rewritten

    # the report: students (fp32, int8), the pruned students (fp32, int8) and the teacher, on the Pareto plot
    data = json.loads((root / "report" / "report.json").read_text())
    models = {m["label"]: m for m in data["models"]}
    assert set(models) == {
        "tiny (fp32)",
        "tiny (int8)",
        "tiny-pruned-0.5 (fp32)",
        "tiny-pruned-0.5 (int8)",
        "teacher (fp32)",
    }
    assert all(m["verified"] and m["n"] == 48 for m in models.values())
    assert models["teacher (fp32)"]["role"] == "teacher" and models["tiny-pruned-0.5 (int8)"]["pruned"]
    assert models["tiny (fp32)"]["recipe"]["method"]["name"] == "akd"
    assert data["plots"]["pareto"] == "pareto.png" and (root / "report" / "index.html").is_file()
    assert any(m["front_bytes"] for m in models.values()) and any(m["front_p50_ms"] for m in models.values())
    # each stage's wall time: in pipeline.json, in the report (all stages before it) and in the output
    last_run = json.loads((root / "pipeline.json").read_text())["extra"]["last_run"]
    assert [t["key"] for t in last_run["stages"]] == [t["key"] for t in data["stages"]] + ["report"]
    ran = {t["key"]: t for t in last_run["stages"]}
    assert not ran["distill"]["ran"] and ran["distill"]["seconds_when_run"] > 0 and ran["verify/teacher"]["ran"]
    assert all(t["seconds"] >= 0 for t in last_run["stages"])
    assert last_run["seconds"] == pytest.approx(sum(t["seconds"] for t in last_run["stages"]), abs=0.05)
    assert "## Pipeline stages" in (root / "report" / "report.md").read_text()
    assert "Pipeline stages" in (root / "report" / "index.html").read_text()
    assert "wall time per stage" in result.output and "when it ran)" in result.output
    assert "tiny-pruned-0.5 (int8)" in result.output, "the summary table lists the models"
    again = CliRunner().invoke(cli, ["report", str(root), "--out", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert {m["label"] for m in json.loads((tmp_path / "again" / "report.json").read_text())["models"]} == set(models)

    # a third run has nothing to do
    forbid("export")
    forbid("verify")
    final = snapshot(run_dir, root)
    result = invoke(str(recipe), "--prune", "0.5", *FAST)
    assert result.exit_code == 0, result.output
    assert result.output.count("up to date") == 9, result.output
    assert snapshot(run_dir, root) == final, "a run with nothing to do writes nothing"


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from akd_edge.cli import train_cmd
    from akd_edge.cli.main import main

    kill_in = os.environ["KILL_IN"]  # "distill": its epoch 2; "compress": its fine-tuning
    seen = {}
    real_start, real_epoch, real_batch = (
        train_cmd.RichCallbacks.on_train_start, train_cmd.RichCallbacks.on_epoch_start, train_cmd.RichCallbacks.on_batch
    )

    def on_train_start(self, run_dir, info):
        seen["stage"] = "compress" if "tiny-pruned" in str(run_dir) else "distill"
        real_start(self, run_dir, info)

    def on_epoch_start(self, epoch, epochs, total, start):
        seen["epoch"] = epoch
        real_epoch(self, epoch, epochs, total, start)

    def on_batch(self, batch, stats):
        real_batch(self, batch, stats)
        late = seen.get("epoch") == 2 and batch >= 2 if kill_in == "distill" else True
        if seen.get("stage") == kill_in and late:
            os.kill(os.getpid(), signal.SIGKILL)

    train_cmd.RichCallbacks.on_train_start = on_train_start
    train_cmd.RichCallbacks.on_epoch_start = on_epoch_start
    train_cmd.RichCallbacks.on_batch = on_batch
    sys.argv = ["akd-edge", "run", *sys.argv[1:]]
    main()
    """
)


def kill_during(stage: str, tmp_path: Path, *args: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "KILL_IN": stage, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == -9, f"the child was not killed in {stage}:\n{done.stdout}\n{done.stderr}"


def epochs_trained(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line and json.loads(line)["event"] == "epoch"]


def test_killed_run_continues_where_it_stopped(tmp_path: Path, forbid: Any) -> None:
    """SIGKILL in the middle of distillation, then of compression: each rerun continues, nothing finished is redone."""
    recipe = write_toml(tmp_path / "tiny.toml", recipe_dict(tmp_path / "runs", None, epochs=2, checkpoint_every=1))
    args = [str(recipe), "--no-int8", *FAST]
    run_dir, root = tmp_path / "runs" / "tiny", tmp_path / "runs" / "tiny-pipeline"

    kill_during("distill", tmp_path, *args)
    assert (run_dir / "last.pt").is_file() and not (run_dir / "summary.json").exists()
    assert epochs_trained(run_dir) == [1], "killed in epoch 2, after epoch 1 finished"
    result = invoke(*args, "--set", 'description="other words: not a different run"')
    assert result.exit_code == 0, result.output
    assert "resumed and finished" in result.output
    assert epochs_trained(run_dir) == [1, 2], "epoch 1 was not trained again"
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["tiny", "tiny-pipeline"], "the same folders, continued"

    finished = snapshot(run_dir, root / "export")
    kill_during("compress", tmp_path, *args, "--prune", "0.5")
    assert (root / "work" / "tiny-pruned-0.5").is_dir() and not (root / "compress").exists()
    forbid("distill")
    forbid("export", {"tiny"})
    forbid("verify", {"tiny"})
    result = invoke(*args, "--prune", "0.5")
    assert result.exit_code == 0, result.output
    assert (root / "compress" / "tiny-pruned-0.5" / "best.pt").is_file()
    assert not (root / "work").exists(), "the killed attempt was cleared and the work folder removed"
    kept = (f"{run_dir}/", f"{root / 'export' / 'tiny'}/")
    assert snapshot(run_dir, root / "export" / "tiny") == {k: v for k, v in finished.items() if k.startswith(kept)}


# -- the parts, without training ---------------------------------------------------------------------------


def test_bad_options_are_one_line_exit_2_before_any_work(tmp_path: Path) -> None:
    recipe = write_toml(tmp_path / "tiny.toml", recipe_dict(tmp_path / "runs", None))
    for args, message in (
        (["--prune", "1.5"], "between 0 and 1"),
        (["--prune", "0.5,abc"], "is not a number"),
        (["--set", "train.epochz=2"], "unknown key 'train.epochz'"),
        (["--no-int8", "--calib", "0", "--n", "0"], "--n"),
    ):
        result = invoke(str(recipe), *args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = invoke(str(recipe), "--out", str(mine))
    assert result.exit_code == 2 and "not an akd-edge pipeline folder" in result.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_plan_names_each_model_and_leaves_out_onnx_teachers(tmp_path: Path) -> None:
    recipe = load_recipe(
        {**recipe_dict(tmp_path, None), "method": {"name": "akd"}},
        [
            'teachers=[{path="builtin:fmnist-teacher"}, {path="onnx:x.onnx"}, {path="runs/tiny"}]',
        ],
    )
    keys = [s.key for s in plan_stages(recipe, PipelineOptions(prune=(0.5, 0.3, 0.5)))]
    assert keys == [
        "distill",
        "compress/tiny-pruned-0.3",
        "compress/tiny-pruned-0.5",
        "export/tiny",
        "verify/tiny",
        "export/tiny-pruned-0.3",
        "verify/tiny-pruned-0.3",
        "export/tiny-pruned-0.5",
        "verify/tiny-pruned-0.5",
        "export/fmnist-teacher",
        "verify/fmnist-teacher",
        "export/teacher-3",  # the run folder's own name, "tiny", is the student's
        "verify/teacher-3",
        "report",
    ]
    assert [s.key for s in plan_stages(recipe, PipelineOptions(teacher=False))][-2:] == ["verify/tiny", "report"]
    with pytest.raises(UsageError, match="between 0 and 1"):
        PipelineOptions(prune=(float("nan"),))


def test_state_reruns_a_stage_whose_inputs_or_outputs_changed(tmp_path: Path) -> None:
    out = tmp_path / "stage"
    out.mkdir()
    (out / "a.bin").write_bytes(b"output")
    state = PipelineState(tmp_path, {"run": {"name": "x"}})
    inputs = digest({"source": "abc", "ratio": 0.5})
    state.finish("compress/x", inputs, out, ["a.bin"], 1.0)
    reread = PipelineState(tmp_path, {})
    assert reread.up_to_date("compress/x", inputs, out) is not None
    assert reread.up_to_date("compress/x", digest({"source": "abc", "ratio": 0.3}), out) is None
    assert digest({"b": 1, "a": [1, 2]}) == digest({"a": [1, 2], "b": 1}), "key order does not matter"
    (out / "a.bin").write_bytes(b"changed by hand")
    assert reread.up_to_date("compress/x", inputs, out) is None
    (tmp_path / "pipeline.json").write_text("{not json")
    assert PipelineState(tmp_path, {}).records == {}, "a damaged state file means every stage is checked again"


def test_runs_and_pipeline_folders_are_found_by_recipe(tmp_path: Path) -> None:
    base = recipe_dict(tmp_path / "runs", None)
    recipe = load_recipe(base)
    run = tmp_path / "runs" / "tiny"
    run.mkdir(parents=True)
    mark(run, "run")
    write_recipe(recipe, run / "recipe.toml")
    assert find_run(recipe, teacher_digests(recipe), None) is None, "no checkpoint: nothing to reuse or resume"
    (run / "last.pt").write_bytes(b"x")
    assert find_run(recipe, [], None).finished is False
    (run / "best.pt").write_bytes(b"x")
    (run / "summary.json").write_text(json.dumps({"epochs": 1}))
    assert find_run(recipe, [], None).finished is True
    assert find_run(load_recipe(base, ["run.threads=2", 'description="other words"']), [], None) is not None
    assert find_run(load_recipe(base, ["train.epochs=2"]), [], None) is None
    assert find_run(load_recipe(base, ["train.optim.lr=0.5"]), [], None) is None

    root, lock = claim_root(recipe, None)
    lock.release()
    assert root == tmp_path / "runs" / "tiny-pipeline"
    PipelineState(root, to_dict(recipe)).save()
    again, lock = claim_root(recipe, None)
    lock.release()
    other, lock = claim_root(load_recipe(base, ["train.epochs=3"]), None)
    lock.release()
    assert again == root and other == tmp_path / "runs" / "tiny-pipeline-2"
