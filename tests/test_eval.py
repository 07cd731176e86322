"""Robust evaluation: properties of the numbers, the sanity checks, eval.json and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from akd_edge.attacks.suite import AttackSpec, parse_attacks
from akd_edge.cli.eval_cmd import eval_cmd
from akd_edge.core.interval import format_interval, wilson_interval
from akd_edge.evaluation import checks
from akd_edge.evaluation.command import EvalOptions, evaluate
from akd_edge.evaluation.engine import evaluate_model

SYNTHETIC = "n=256,test=48,shape=1x8x8,classes=4,noise=0.25,seed=1"


def prototypes(n_classes: int = 4) -> torch.Tensor:
    return torch.rand(n_classes, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class Prototype(nn.Module):
    """Nearest-class-mean linear classifier: accurate on its data, not robust at large eps."""

    def __init__(self, protos: torch.Tensor, scale: float = 4.0) -> None:
        super().__init__()
        flat = protos.flatten(1)
        self.linear = nn.Linear(flat.shape[1], len(protos))
        with torch.no_grad():
            self.linear.weight.copy_(2 * scale * flat)
            self.linear.bias.copy_(-scale * (flat**2).sum(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class Rounded(Prototype):
    """Quantises its input first: zero input gradients everywhere (masked gradients)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.round(x * 4) / 4)


class Softmaxed(Prototype):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)


class Noisy(Prototype):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.randn(len(x), self.linear.out_features)


def data(n: int = 40, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    y = torch.arange(n) % 4
    x = (prototypes()[y] + noise * torch.randn(n, 1, 8, 8, generator=generator)).clamp(0, 1)
    return x, y


def batches(x: torch.Tensor, y: torch.Tensor, size: int):
    for start in range(0, len(x), size):
        yield x[start : start + size], y[start : start + size]


def run(model: nn.Module, specs: list[AttackSpec], size: int = 16, **kwargs):
    x, y = data()
    return evaluate_model(model, batches(x, y, size), specs, total=len(x), **kwargs)


def test_robust_below_clean_and_worst_case_below_each_attack() -> None:
    specs = [
        AttackSpec("pgd", eps=0.2, steps=5),
        AttackSpec("aa-fast", eps=0.2),
        AttackSpec("square", eps=0.2, n_queries=100),
    ]
    model = Prototype(prototypes())
    model.train()
    results = run(model, specs)
    assert model.training  # the evaluation leaves the model's mode alone
    clean = results["clean"]["acc"]
    worst = results["worst_case"]["acc"]
    assert clean > 0.9
    for entry in results["attacks"].values():
        assert entry["acc"] <= clean
        assert worst <= entry["acc"]
    assert worst < clean  # the attacks did find adversarial examples at this radius
    assert results["calibration"]["adversarial"]["accuracy"] <= clean
    assert results["attacks"]["aa-fast"]["after"]["apgd-t"] == results["attacks"]["aa-fast"]["acc"]
    assert results["attacks"]["aa-fast"]["after_ci95"]["apgd-t"] == results["attacks"]["aa-fast"]["ci95"]


def test_stronger_pgd_never_does_better(run_dir: Path) -> None:
    from akd_edge.data import iterate_batches, load_test_split
    from akd_edge.models.checkpoint import load_model

    model, _ = load_model(run_dir)
    test, _ = load_test_split("synthetic", SYNTHETIC)

    def robust_acc(**settings) -> float:
        stream = ((x, y) for x, y, _ in iterate_batches(test, 16))
        results = evaluate_model(model, stream, [AttackSpec("pgd", eps=0.1, **settings)], total=len(test))
        return results["attacks"]["pgd"]["acc"]

    by_steps = [robust_acc(steps=steps) for steps in (1, 3, 10)]
    assert by_steps == sorted(by_steps, reverse=True)
    assert by_steps[-1] < by_steps[0]
    assert robust_acc(steps=2, restarts=3) <= robust_acc(steps=2, restarts=1)


def test_eps_curve_is_monotone_and_starts_at_clean_accuracy() -> None:
    grid = [0.0, 0.05, 0.1, 0.15, 0.2, 0.3]
    spec = AttackSpec("pgd", eps=0.1, steps=5)
    results = run(Prototype(prototypes()), [], curve=grid, curve_spec=spec)
    points = results["eps_curve"]["points"]
    accs = [p["acc"] for p in points]
    assert [p["eps"] for p in points] == grid
    assert accs == sorted(accs, reverse=True)
    assert accs[0] == results["clean"]["acc"]
    assert accs[-1] < accs[0]


def test_streaming_gives_the_same_clean_and_calibration_numbers_and_is_lazy() -> None:
    model = Prototype(prototypes(), scale=1.0)
    small, large = run(model, [], size=7), run(model, [], size=40)
    assert small["clean"] == large["clean"]
    for key in ("ece", "nll", "brier"):
        assert small["calibration"]["clean"][key] == pytest.approx(large["calibration"]["clean"][key], abs=1e-12)
    # Batches are consumed one at a time: the next is requested only after the previous was evaluated.
    events: list[str] = []
    x, y = data()

    def source():
        for i, batch in enumerate(batches(x, y, 10)):
            events.append(f"yield {i}")
            yield batch

    evaluate_model(model, source(), [], total=len(x), progress=lambda done, total, info: events.append(f"done {done}"))
    assert events == ["yield 0", "done 10", "yield 1", "done 20", "yield 2", "done 30", "yield 3", "done 40"]


def test_sanity_checks_fire_on_broken_models_only() -> None:
    x, y = data(16)
    healthy = checks.run_model_checks(Prototype(prototypes(), scale=1.0), x, y)
    assert all(c.ok for c in healthy)
    by_name = {c.name: c for c in checks.run_model_checks(Softmaxed(prototypes()), x, y)}
    assert not by_name["logits"].ok and by_name["determinism"].ok
    by_name = {c.name: c for c in checks.run_model_checks(Rounded(prototypes()), x, y)}
    assert not by_name["zero_gradients"].ok and "not differentiable" in by_name["zero_gradients"].message
    assert by_name["logits"].ok
    by_name = {c.name: c for c in checks.run_model_checks(Noisy(prototypes()), x, y)}
    assert not by_name["determinism"].ok and by_name["zero_gradients"].ok


def test_gradient_masking_is_detected_end_to_end() -> None:
    specs = [AttackSpec("pgd", eps=0.3, steps=10), AttackSpec("square", eps=0.3, n_queries=300)]
    masked = {c["name"]: c for c in run(Rounded(prototypes()), specs)["checks"]}
    assert not masked["gradient_masking"]["ok"]
    assert masked["gradient_masking"]["details"]["black_box_only"] > 0
    honest = {c["name"]: c for c in run(Prototype(prototypes(), scale=0.5), specs)["checks"]}
    assert honest["gradient_masking"]["ok"] and not honest["gradient_masking"]["skipped"]


def test_gradient_masking_check_by_hand() -> None:
    clean = torch.tensor([1, 1, 1, 1, 0], dtype=torch.bool)
    white = [torch.tensor([1, 1, 1, 0, 0], dtype=torch.bool)]
    black = [torch.tensor([1, 0, 1, 1, 0], dtype=torch.bool)]
    result = checks.check_gradient_masking(clean, white, black)
    assert not result.ok and result.details["black_box_only"] == 1
    assert checks.check_gradient_masking(clean, white, []).skipped


def test_attack_names_and_bad_values() -> None:
    from akd_edge.core.errors import UsageError

    assert parse_attacks(["pgd,aa", "fast", "clean", "pgd"]) == ["pgd", "aa-standard", "aa-fast"]
    with pytest.raises(UsageError, match="unknown attack"):
        parse_attacks(["cw"])
    with pytest.raises(UsageError):
        AttackSpec("pgd", eps=-1.0)


# ----------------------------------------------------------------------------------------------
# checkpoint -> eval.json, and the command


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with a cnn-student briefly trained on synthetic data."""
    from akd_edge.config import DataConfig
    from akd_edge.data import iterate_batches, load_dataset
    from akd_edge.models import create_model
    from akd_edge.models.checkpoint import save_atomic

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    splits = load_dataset(DataConfig(name="synthetic", data_dir=SYNTHETIC, val_size=0), seed=0)
    arch = {"name": "cnn-student", "kwargs": {}, "num_classes": 4, "input_shape": [1, 8, 8], "mean": 0.5, "std": 0.25}
    model = create_model("cnn-student", num_classes=4, input_shape=(1, 8, 8), mean=0.5, std=0.25)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for epoch in range(3):
        for x, y, _ in iterate_batches(splits.train, 32, shuffle=True, epoch=epoch):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("run")
    save_atomic(
        {
            "format": "akd-edge/1",
            "model": model.state_dict(),
            "arch": arch,
            "data": {"name": "synthetic", "class_names": ["a", "b", "c", "d"], "data_dir": SYNTHETIC},
            "threat": {"norm": "linf", "eps": 0.05},
            "role": "student",
            "epoch": 3,
            "val": {},
        },
        path / "best.pt",
    )
    return path


def test_evaluate_writes_eval_json_with_settings_and_versions(run_dir: Path, tmp_path: Path) -> None:
    options = EvalOptions(n=32, batch_size=16, steps=3, eps_curve=(0.0, 0.05, 0.1))
    report, path = evaluate(run_dir, options, out_dir=tmp_path)
    assert path == tmp_path / "eval.json"
    saved = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert saved["threat"] == {"norm": "linf", "eps": 0.05}  # from the checkpoint
    assert saved["data"]["n_samples"] == 32
    pgd = saved["results"]["attacks"]["pgd"]
    assert pgd["settings"]["steps"] == 3 and pgd["settings"]["restarts"] == 1 and pgd["settings"]["seed"] == 0
    assert pgd["acc"] <= saved["results"]["clean"]["acc"]
    assert saved["results"]["clean"]["acc"] > 0.5  # the model learned something
    assert saved["versions"]["torch"].startswith(torch.__version__.split("+")[0])
    assert saved["versions"]["pyautoattack"]
    assert (tmp_path / "eps_curve.png").is_file() and (tmp_path / "reliability.png").is_file()
    assert saved["plots"] == {"eps_curve": "eps_curve.png", "reliability": "reliability.png"}


def test_evaluate_eps_override_and_missing_matplotlib(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from akd_edge.evaluation import plots

    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    report, _ = evaluate(run_dir, EvalOptions(n=16, steps=2, eps=0.0, norm="l2"), out_dir=tmp_path)
    assert report["threat"] == {"norm": "l2", "eps": 0.0}
    assert report["results"]["attacks"]["pgd"]["acc"] == report["results"]["clean"]["acc"]  # eps 0 = clean
    assert "pip install" in report["plots"]["note"]
    assert not list(tmp_path.glob("*.png"))


def test_cli_prints_table_and_reports_user_errors(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    args = [str(run_dir), "--n", "16", "--steps", "2", "--out", str(tmp_path), "--no-plots"]
    result = runner.invoke(eval_cmd, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "PGD-2" in result.output and "ECE" in result.output
    results = json.loads((tmp_path / "eval.json").read_text())["results"]
    assert results["clean"]["n"] == 16
    # every accuracy has its 95% Wilson interval in eval.json and in the table
    for entry in (results["clean"], results["attacks"]["pgd"], results["worst_case"]):
        assert entry["ci95"] == wilson_interval(entry["correct"], 16)
    for entry in (results["clean"], results["attacks"]["pgd"]):
        assert format_interval(entry["ci95"]) in result.output
    assert "95% CI" in result.output
    bad = runner.invoke(eval_cmd, [str(run_dir), "--attack", "cw", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown attack" in bad.output
    missing = runner.invoke(eval_cmd, [str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "error" in missing.output
    two = runner.invoke(eval_cmd, [str(run_dir), str(run_dir)])
    assert two.exit_code == 2 and "--dynamics" in two.output


def test_cli_names_each_file_it_wrote_once(run_dir: Path, tmp_path: Path) -> None:
    """One "wrote" line naming eval.json and its plots (the library no longer logs a second one)."""
    from akd_edge.cli.main import cli

    pytest.importorskip("matplotlib")
    args = ["eval", str(run_dir), "--n", "16", "--steps", "2", "--eps-curve", "0,0.1", "--out", str(tmp_path)]
    result = CliRunner().invoke(cli, args, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert result.output.count("eval.json") == 1
    assert f"wrote eval.json, eps_curve.png, reliability.png in {tmp_path}" in result.output
    assert (tmp_path / "eps_curve.png").is_file() and (tmp_path / "reliability.png").is_file()


def test_cli_dynamics_comparison(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name, p in (("at", 0.5), ("akd", 0.7)):
        (tmp_path / name).mkdir()
        record = (rng.random((4, 50)) < p).astype(np.uint8)
        np.savez(tmp_path / name / "dynamics.npz", clean=np.maximum(record, rng.random((4, 50)) < 0.9), adv=record)
    result = CliRunner().invoke(
        eval_cmd, ["--dynamics", str(tmp_path / "at"), str(tmp_path / "akd"), "--names", "at,akd", "--no-plots"]
    )
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "at" / "dynamics.json").read_text())
    assert saved["names"] == ["at", "akd"]
    never = next(r for r in saved["rows"] if r["set"] == "adv/never_learned")
    assert never["both"] + never["only_at"] == never["at"]
    assert "at vs akd" in result.output


def test_dynamics_of_one_run_with_plot(tmp_path: Path) -> None:
    from akd_edge.evaluation.dynamics import evaluate_dynamics

    record = np.array([[0, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=np.uint8)
    np.savez(tmp_path / "dynamics.npz", clean=np.ones_like(record), adv=record)
    report, path = evaluate_dynamics([tmp_path], names=["at"])
    assert path == tmp_path / "dynamics.json" and (tmp_path / "dynamics.png").is_file()
    sets = report["summaries"]["at"]["adv"]["sets"]
    assert sets["never_learned"]["count"] == 1 and sets["memorised"]["count"] == 1
    with np.load(tmp_path / "dynamics_samples.npz") as arrays:
        assert arrays["at/adv/learned_epoch"].tolist() == [2, 1, 0]
        assert arrays["at/adv/never_learned"].tolist() == [False, False, True]


def test_unwritable_out_fails_before_any_attack_runs(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from akd_edge.evaluation import command as eval_command

    def no_attacks(*args, **kwargs):
        pytest.fail("the attacks ran although the output folder cannot be written")

    monkeypatch.setattr(eval_command, "evaluate_model", no_attacks)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "eval"  # its parent is a regular file: unwritable for root too
    result = CliRunner().invoke(eval_cmd, [str(run_dir), "--n", "16", "--out", str(out)])
    assert result.exit_code == 2 and "cannot write" in result.output, result.output
    assert blocker.read_text() == "not a folder"


def test_eval_json_is_written_atomically(run_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from akd_edge.core import files

    (tmp_path / "eval.json").write_text('{"format": "akd-edge-eval/1", "old": true}\n')  # an earlier eval's

    def full_disk(fd: int) -> None:  # fails after the temp file was written, before the rename
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "fsync", full_disk)
    with pytest.raises(OSError, match="disk full"):
        evaluate(run_dir, EvalOptions(n=16, steps=1, plots=False, checks=False), out_dir=tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["old"]  # the old report is intact
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]  # and no temp file is left


def test_dynamics_with_unwritable_out_fails_up_front(tmp_path: Path) -> None:
    from akd_edge.core.errors import UsageError
    from akd_edge.evaluation.dynamics import evaluate_dynamics

    record = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    np.savez(tmp_path / "dynamics.npz", clean=np.ones_like(record), adv=record)
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="cannot write|not a folder"):
        evaluate_dynamics([tmp_path], out_dir=tmp_path / "f" / "out", plots=False)
    assert not (tmp_path / "dynamics.json").exists()
