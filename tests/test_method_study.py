"""benchmarks/method_study.py on a tiny synthetic study: runs in parallel, resumes cell by cell, reports."""

from __future__ import annotations

import importlib.util
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "method_study.py"

SPEC = """
description = "tiny synthetic study for the tests"
recipe = "fmnist-quickstart"
seeds = [0, 1]
set = [
    'data.name="synthetic"', 'data.data_dir="n=192,test=48,shape=1x12x12,classes=3"', "data.val_size=64",
    "data.batch_size=64", "data.eval_batch_size=64", "train.epochs=1", "train.attack.steps=1",
    "eval.attack.steps=2", "eval.val_samples=64", "teachers=[]", 'run.device="cpu"',
]

[eval]
attacks = ["pgd"]
n = 48
steps = 3

[[variants]]
name = "at"
set = ["method.name=at"]

[[variants]]
name = "trades"
set = ["method.name=trades", "method.beta=1.0"]
"""
CELLS = ["at/seed0", "trades/seed0", "at/seed1", "trades/seed1"]


def _load_module():
    spec = importlib.util.spec_from_file_location("method_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("method_study", module)  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _run(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), *args]
    done = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _mtimes(runs: Path, cells: list[str] = CELLS) -> dict[str, tuple[int, int]]:
    out = {}
    for cell in cells:
        folder = runs / "tiny" / cell
        out[cell] = ((folder / "summary.json").stat().st_mtime_ns, (folder / "best.pt").stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "tiny.toml").write_text(SPEC)
    paths = {"tmp": tmp, "spec": tmp / "tiny.toml", "runs": tmp / "runs", "results": tmp / "results" / "tiny.json"}
    common = ["--runs", str(paths["runs"]), "--results", str(paths["results"])]
    paths["first"] = _run(tmp, "run", str(paths["spec"]), "--jobs", "2", *common)
    paths["common"] = common
    return paths


def test_dry_run_lists_every_cell_and_trains_nothing(tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(SPEC)
    done = _run(tmp_path, "run", "tiny.toml", "--dry-run", "--runs", "runs", "--results", "r.json")
    for cell in CELLS:
        assert f"{cell}: train" in done.stdout
    assert "4 cells" in done.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "r.json").exists()


def test_study_writes_one_evaluated_entry_per_cell(study: dict[str, Path]) -> None:
    results = json.loads(study["results"].read_text())
    assert sorted(results["cells"]) == sorted(CELLS)
    for key, cell in results["cells"].items():
        assert cell["status"] == "done", cell
        assert (Path(cell["run_dir"]) / "summary.json").is_file()
        ev = cell["eval"]
        assert ev["n"] == 48 and ev["settings"]["attacks"] == ["pgd"]
        pgd = ev["attacks"]["pgd"]
        assert pgd["settings"]["steps"] == 3 and pgd["settings"]["eps"] == pytest.approx(0.1)
        assert 0.0 <= ev["robust"] <= ev["clean"] <= 1.0
        assert cell["train"]["epochs"] == 1 and cell["train"]["method"] == key.split("/")[0]


def test_rerun_redoes_only_what_is_missing(study: dict[str, Path]) -> None:
    runs, results_path = study["runs"], study["results"]
    before = _mtimes(runs)
    results = json.loads(results_path.read_text())
    untouched = results["cells"]["trades/seed1"]
    # at/seed0: summary.json lost (as if killed after its last checkpoint): resumed from last.pt
    (runs / "tiny" / "at" / "seed0" / "summary.json").unlink()
    # trades/seed0: results entry lost only: evaluated again, not trained
    del results["cells"]["trades/seed0"]
    # at/seed1: run directory and results entry lost: trained from scratch
    shutil.rmtree(runs / "tiny" / "at" / "seed1")
    del results["cells"]["at/seed1"]
    results_path.write_text(json.dumps(results))
    # trades/seed1: run directory lost but its results entry is complete (a study continued from a fresh
    # checkout, where runs/ is not committed): kept, not trained again
    shutil.rmtree(runs / "tiny" / "trades" / "seed1")
    done = _run(study["tmp"], "run", str(study["spec"]), "--jobs", "2", *study["common"])
    assert not (runs / "tiny" / "trades" / "seed1").exists(), "a cell with complete results was trained again"
    after = _mtimes(runs, [c for c in CELLS if c != "trades/seed1"])
    assert after["trades/seed0"] == before["trades/seed0"], "an evaluation-only cell was trained again"
    assert after["at/seed0"][0] != before["at/seed0"][0] and after["at/seed0"][1] == before["at/seed0"][1]
    assert after["at/seed1"][1] != before["at/seed1"][1]
    new = json.loads(results_path.read_text())["cells"]
    assert sorted(new) == sorted(CELLS) and all(c["status"] == "done" for c in new.values())
    assert {k: v for k, v in new["trades/seed1"].items() if k != "action"} == {
        k: v for k, v in untouched.items() if k != "action"
    }, "a finished, evaluated cell was evaluated again"
    assert "trades/seed1: done (kept)" in done.stderr


def test_retrain_trains_a_kept_cell_again(study: dict[str, Path]) -> None:
    # trades/seed1's run directory is gone (test_rerun_redoes_only_what_is_missing) and its results kept:
    # --retrain brings the run back, so that it can be evaluated with other attacks
    runs, results_path = study["runs"], study["results"]
    if (runs / "tiny" / "trades" / "seed1").exists():
        shutil.rmtree(runs / "tiny" / "trades" / "seed1")
    old = json.loads(results_path.read_text())["cells"]["trades/seed1"]
    common = [*study["common"], "--only", "trades", "--seeds", "1"]
    dry = _run(study["tmp"], "run", str(study["spec"]), "--retrain", "--dry-run", *common)
    assert "trades/seed1: train" in dry.stdout
    _run(study["tmp"], "run", str(study["spec"]), "--retrain", *common)
    assert (runs / "tiny" / "trades" / "seed1" / "summary.json").is_file()
    new = json.loads(results_path.read_text())["cells"]["trades/seed1"]
    assert new["status"] == "done" and new["train"]["summary_mtime_ns"] != old["train"]["summary_mtime_ns"]


def test_eval_batch_is_used_and_recorded(study: dict[str, Path]) -> None:
    results = study["tmp"] / "results" / "batch16.json"
    common = ["--runs", str(study["runs"]), "--results", str(results)]
    _run(study["tmp"], "run", str(study["spec"]), "--eval-only", "--only", "at", "--eval-batch", "16", *common)
    cells = json.loads(results.read_text())["cells"]
    assert sorted(cells) == ["at/seed0", "at/seed1"]
    for cell in cells.values():
        assert cell["eval"]["settings"]["batch_size"] == 16 and cell["eval"]["n"] == 48


def test_report_prints_mean_and_std_over_seeds(study: dict[str, Path]) -> None:
    done = _run(study["tmp"], "report", str(study["spec"]), "--results", str(study["results"]))
    cells = json.loads(study["results"].read_text())["cells"]
    rows = {line.split("|")[1].strip(): line for line in done.stdout.splitlines() if line.startswith("| ")}
    for variant in ("at", "trades"):
        clean = [100 * cells[f"{variant}/seed{s}"]["eval"]["clean"] for s in (0, 1)]
        pgd = [100 * cells[f"{variant}/seed{s}"]["eval"]["attacks"]["pgd"]["acc"] for s in (0, 1)]
        row = [c.strip() for c in rows[variant].split("|")[1:-1]]
        assert row[3] == "2"  # seeds
        assert row[6] == f"{statistics.fmean(clean):.1f} ± {statistics.stdev(clean):.1f}"
        assert row[7] == f"{statistics.fmean(pgd):.1f} ± {statistics.stdev(pgd):.1f}"
    assert "PGD-3 %" in rows["variant"] and "first 48 images" in done.stdout
    png = study["results"].with_suffix(".png")
    assert png.is_file() or "matplotlib is not installed" in done.stdout


def test_mean_std_is_the_sample_deviation() -> None:
    module = _load_module()
    mean, std = module.mean_std([0.8, 0.9, 1.0])
    assert mean == pytest.approx(0.9) and std == pytest.approx(0.1)
    assert module._pm([0.5]) == "50.0"


def test_spec_errors_name_the_problem(tmp_path: Path) -> None:
    module = _load_module()
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.replace('name = "trades"', 'name = "at"'))
    with pytest.raises(SystemExit, match="repeat"):
        module.load_study(bad)
    bad.write_text(SPEC + "\nepochs = 3\n")
    with pytest.raises(SystemExit, match="unknown key"):
        module.load_study(bad)
