"""`akd-edge compress` end to end on a tiny AKD-distilled student trained on synthetic data."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from akd_edge.cli.compress_cmd import compress_cmd
from akd_edge.config import load_recipe, read_toml
from akd_edge.core.files import marked_kind
from akd_edge.core.interval import format_interval, wilson_interval
from akd_edge.models import model_info
from akd_edge.models.checkpoint import load_checkpoint, load_model
from akd_edge.train.loop import train_run

SYNTH = "n=160,test=48,shape=1x12x12,classes=4,noise=0.25"


def recipe(name: str, method: str, **extra: object) -> dict:
    return {
        "run": {"name": name, "seed": 1},
        "data": {"name": "synthetic", "data_dir": SYNTH, "val_size": 32, "batch_size": 32, "eval_batch_size": 64},
        "model": {"name": "cnn-student"},
        "method": {"name": method},
        "train": {"epochs": 1, "attack": {"eps": 0.1, "steps": 2}, "optim": {"lr": 0.05}},
        "eval": {"val_samples": 32, "attack": {"eps": 0.1, "steps": 3}},
        **extra,
    }


@pytest.fixture(scope="module")
def student_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A teacher trained with PGD-AT, then a student distilled from it with AKD (one epoch each)."""
    root = tmp_path_factory.mktemp("runs")
    train_run(load_recipe(recipe("teacher", "at")), root / "teacher", role="teacher")
    student = recipe("student", "akd", teachers=[{"path": str(root / "teacher")}])
    train_run(load_recipe(student), root / "student")
    return root / "student"


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _invoke(*args: str) -> object:
    return CliRunner().invoke(compress_cmd, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def test_compress_prunes_fine_tunes_with_akd_and_reports(student_run: Path, tmp_path: Path) -> None:
    source_files = _digest(student_run)
    out = tmp_path / "pruned"
    result = _invoke(
        str(student_run),
        "--ratio",
        "0.5",
        "--steps",
        "2",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--n",
        "48",
        "--aa-n",
        "8",
        "--set",
        "train.optim.lr=0.01",
    )
    assert result.exit_code == 0, result.output
    assert "parameters" in result.output and "AutoAttack fast" in result.output

    report = json.loads((out / "report.json").read_text())
    before, after = report["before"], report["after"]
    assert after["params"] < before["params"] and after["macs"] < before["macs"]
    for side in (before, after):
        assert 0 <= side["pgd_acc"] <= side["clean_acc"] <= 1
        assert side["aa_acc"] is not None and 0 <= side["aa_acc"] <= side["pgd_acc"] + 1 / 8
        assert side["n"] == 48 and side["aa_n"] == 8 and side["latency_ms"] > 0
        # each accuracy with its 95% Wilson interval, in report.json and in the printed table
        for key, n in (("clean", 48), ("pgd", 48), ("aa", 8)):
            assert side[f"{key}_ci95"] == wilson_interval(round(side[f"{key}_acc"] * n), n)
            assert format_interval(side[f"{key}_ci95"]) in result.output
    assert "95% CI" in result.output and "Wilson" in report["evaluation"]["interval"]
    assert [s["step"] for s in report["steps"]] == [1, 2]
    assert report["steps"][0]["params"] > report["steps"][1]["params"] == after["params"]
    assert report["finetune"]["method"] == "akd" and report["finetune"]["epochs_per_step"] == 1
    assert report["finetune"]["optim"]["lr"] == 0.01
    assert set(report["time_s"]) >= {"prune_s", "finetune_s", "total_s"}
    assert all(c % 8 == 0 for c in report["channels"]["after"].values())

    # Each step fine-tuned with the source recipe's objective and teacher, carrying the pruning history.
    for k in (1, 2):
        step_recipe = load_recipe(read_toml(out / f"step-{k}" / "recipe.toml"))
        assert step_recipe.method.name == "akd" and step_recipe.teachers[0].path.endswith("teacher")
        assert load_checkpoint(out / f"step-{k}", "best")["pruning"]["history"]
    # The final model reloads (weights_only) into the original architecture, equal to the last step's best.
    model, meta = load_model(out)
    assert meta["arch"]["name"] == "cnn-student" and meta["pruning"]["settings"]["ratio"] == 0.5
    assert model_info(model, (1, 12, 12))["params"] == after["params"]
    step_best = load_checkpoint(out / "step-2", "best")["model"]
    assert all(torch.equal(v, step_best[k]) for k, v in model.state_dict().items())
    assert _digest(student_run) == source_files  # the source run is never modified
    assert marked_kind(out) == "compress"

    # The output is never replaced: a second compress into it is refused before any work.
    again = _invoke(str(student_run), "--ratio", "0.5", "--epochs", "0", "--out", str(out), "--autoattack", "none")
    assert again.exit_code == 2 and "earlier compress output" in again.output


def test_target_params_without_fine_tuning_feeds_export(student_run: Path, tmp_path: Path) -> None:
    from akd_edge.export import export_checkpoint

    full = model_info(load_model(student_run)[0], (1, 12, 12))["params"]
    target = full // 3
    out = tmp_path / "pruned"
    result = _invoke(
        str(student_run),
        "--target-params",
        str(target),
        "--epochs",
        "0",
        "--round-to",
        "4",
        "--out",
        str(out),
        "--n",
        "32",
        "--autoattack",
        "none",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["search"]["params"] == report["after"]["params"] <= target
    assert report["after"]["aa_acc"] is None and report["steps"][0].get("val") is None
    assert not (out / "step-1").exists()
    assert "achieved" in result.output

    folder, export_report = export_checkpoint(out, tmp_path / "export", int8=False, mobile_batch=0)
    assert export_report["source"]["pruned"] is True
    assert export_report["checks"]["parity"]["passed"]

    # A pruned run prunes further: the new history extends the old one and replays on the original model.
    again = tmp_path / "again"
    result = _invoke(str(out), "--ratio", "0.3", "--epochs", "0", "--round-to", "4", "--out", str(again), "--n", "16")
    assert result.exit_code == 0, result.output
    first, second = load_checkpoint(out)["pruning"], load_checkpoint(again)["pruning"]
    assert second["history"][: len(first["history"])] == first["history"]
    assert len(second["history"]) > len(first["history"])
    model, _ = load_model(again)
    assert model_info(model, (1, 12, 12))["params"] < report["after"]["params"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "1.5"], "out of range"),
        ([], "exactly one of --ratio, --target-params and --target-macs"),
        (["--ratio", "0.5", "--target-params", "1000"], "--ratio and --target-params"),
        (["--ratio", "0.5", "--keep", "net.nothing"], "no such module"),
        (["--target-params", "100000000"], "nothing to prune"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(student_run: Path, tmp_path: Path, args: list, message: str) -> None:
    result = CliRunner().invoke(compress_cmd, [str(student_run), "--out", str(tmp_path / "o"), "--n", "16", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_a_missing_run_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(compress_cmd, [str(tmp_path / "nope"), "--ratio", "0.5"])
    assert result.exit_code == 2
    assert "neither a checkpoint file nor a run directory" in " ".join(result.output.split())
