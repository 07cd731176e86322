"""`akd-edge report`: the table, the Pareto front, eval plots and provenance, from untrusted folders.

The export folders here are written by hand (a tiny ONNX graph and the report.json that export + verify
would write), so every field can be set, damaged or made hostile; `tests/test_run_cmd.py` builds real ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from akd_edge.cli.main import cli
from akd_edge.core.files import mark
from akd_edge.report import build_report
from akd_edge.report.macs import onnx_macs
from akd_edge.report.pareto import pareto_front


def tiny_onnx(path: Path, channels: int = 2, seed: int = 0) -> Path:
    """Conv(1 -> channels, 3x3, pad 1) on 1x4x4, global average pool, reshape, Gemm(channels -> 3)."""
    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(rng.standard_normal((channels, 3)).astype(np.float32), "fc")
    shape = numpy_helper.from_array(np.array([-1, channels], dtype=np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["images", "w"], ["conv"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["conv"], ["pool"]),
        helper.make_node("Reshape", ["pool", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        [weight, fc, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def accuracies(clean: float, robust: float) -> dict[str, Any]:
    return {
        "clean_acc": clean,
        "clean_ci95": [clean - 0.05, clean + 0.05],
        "transfer_acc": robust + 0.1,
        "transfer_ci95": [robust, robust + 0.2],
        "square_acc": robust + 0.05,
        "square_ci95": [robust, robust + 0.1],
        "robust_acc": robust,
        "robust_ci95": [robust - 0.03, robust + 0.03],
    }


def export_folder(
    root: Path,
    name: str,
    *,
    robust: dict[str, float],
    p50: dict[str, float],
    role: str = "student",
    pruned: bool = False,
    channels: int = 2,
    checkpoint: str = "",
    verified: bool = True,
) -> Path:
    """An export folder as export + verify leave it: model files, report.json with files and verify sections."""
    folder = root / name
    folder.mkdir(parents=True)
    mark(folder, "export")
    names = {"fp32": "model.onnx", "int8": "model.int8.onnx"}
    for index, precision in enumerate(robust):
        tiny_onnx(folder / names[precision], channels, seed=index)
    report: dict[str, Any] = {
        "format": "akd-edge-export/1",
        "source": {
            "checkpoint": checkpoint or f"/elsewhere/{name}/best.pt",
            "run": name,
            "arch": {"name": "cnn-student"},
            "role": role,
            "params": 100 * channels,
            "pruned": pruned,
            "val": {"clean_acc": 0.8, "robust_acc": 0.5},
            "teachers": [{"source": "builtin:fmnist-teacher", "kind": "builtin", "sha256": "ab" * 32, "weight": 1.0}],
        },
        "files": {names[p]: {"bytes": 1, "sha256": sha(folder / names[p])} for p in robust},
        "verify": None,
    }
    if verified:
        models = {names[p]: accuracies(0.9, acc) for p, acc in robust.items()}
        report["verify"] = {
            "created": "2026-01-01T00:00:00",
            "n": 1000,
            "data": {"name": "synthetic"},
            "settings": {
                "norm": "linf",
                "eps": 0.1,
                "seed": 0,
                "square": {"n_queries": 1000, "p_init": 0.8, "loss": "margin"},
                "transfer": {"version": "fast", "attacks": ["apgd-ce", "apgd-t"]},
            },
            "models": models,
            "files": {names[p]: {"sha256": sha(folder / names[p])} for p in robust},
            "latency": {names[p]: {"batch1_p50_ms": ms} for p, ms in p50.items()},
            "machine": {"cpus": 2, "platform": "test"},
        }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def run_dir(root: Path, name: str, *, curve: bool = True) -> Path:
    """A run directory with recipe.toml, summary.json and an eval.json holding an eps curve and calibration."""
    folder = root / name
    folder.mkdir(parents=True)
    mark(folder, "run")
    (folder / "recipe.toml").write_text(f'[run]\nname = "{name}"\n\n[method]\nname = "akd"\n')
    (folder / "best.pt").write_bytes(b"not read by the report")
    summary = {"role": "student", "model": "cnn-student", "params": 200, "best": {"clean_acc": 0.8, "robust_acc": 0.5}}
    (folder / "summary.json").write_text(json.dumps(summary))
    if curve:
        bins = {"edges": [0.0, 0.5, 1.0], "accuracy": [0.3, 0.9], "confidence": [0.4, 0.8]}
        results = {
            "eps_curve": {"settings": {"steps": 10}, "points": [{"eps": 0.0, "acc": 0.9}, {"eps": 0.1, "acc": 0.5}]},
            "calibration": {"clean": {"ece": 0.05, "bins": bins}, "adversarial": {"ece": 0.1, "bins": bins}},
        }
        (folder / "eval.json").write_text(json.dumps({"results": results}))
    return folder


def invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, ["report", *args], env={"COLUMNS": "200"})


# -- the parts ------------------------------------------------------------------------------------------


def test_pareto_front_keeps_exactly_the_undominated() -> None:
    points = [(10.0, 0.5), (20.0, 0.6), (15.0, 0.4), (20.0, 0.55), (5.0, 0.5), (30.0, 0.6)]
    # (10, .5) loses to (5, .5): same accuracy, larger; (15, .4) and (20, .55) lose to (20, .6) or (5, .5);
    # (30, .6) loses to (20, .6)
    assert pareto_front(points) == [4, 1]
    assert pareto_front([(1.0, 0.5), (1.0, 0.5)]) == [0, 1]  # equal points: neither beats the other
    assert pareto_front([]) == []


def test_macs_counted_from_the_onnx_graph(tmp_path: Path) -> None:
    path = tiny_onnx(tmp_path / "m.onnx", channels=2)
    # Conv: 2x4x4 outputs x (1 channel x 3x3) = 288; Gemm: 3 outputs x 2 inputs = 6
    assert onnx_macs(path) == 288 + 6
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    assert onnx_macs(tmp_path / "bad.onnx") is None


# -- the report ----------------------------------------------------------------------------------------


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    run = run_dir(tmp_path, "student")
    return {
        "run": run,
        "student": export_folder(
            tmp_path / "export",
            "student",
            robust={"fp32": 0.60, "int8": 0.58},
            p50={"fp32": 0.10, "int8": 0.12},
            channels=4,
            checkpoint=str(run / "best.pt"),
        ),
        "pruned": export_folder(
            tmp_path / "export",
            "pruned",
            robust={"fp32": 0.50, "int8": 0.40},
            p50={"fp32": 0.05, "int8": 0.20},
            pruned=True,
        ),
        "teacher": export_folder(
            tmp_path / "export",
            "teacher",
            robust={"fp32": 0.70},
            p50={"fp32": 1.0},
            role="teacher",
            channels=16,
        ),
    }


def test_report_table_front_plots_and_provenance(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = invoke(*(str(p) for p in folders.values()), "--out", str(out))
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())
    models = {m["label"]: m for m in data["models"]}
    assert set(models) == {
        "student (fp32)",
        "student (int8)",
        "pruned (fp32)",
        "pruned (int8)",
        "teacher (fp32)",
    }, "the run directory's model is the exported student, not a row of its own"
    # sizes: pruned (2 channels) < student (4) < teacher (16), both files of a folder the same size here, so the
    # more robust of the two is on the front and the other is not; by latency the int8 files are slower too
    expected = {"pruned (fp32)", "student (fp32)", "teacher (fp32)"}
    assert {label for label, m in models.items() if m["front_bytes"]} == expected
    assert {label for label, m in models.items() if m["front_p50_ms"]} == expected
    student = models["student (fp32)"]
    assert student["macs"] == 4 * 16 * 9 + 3 * 4 and student["params"] == 400
    assert student["recipe"]["method"]["name"] == "akd", "the recipe comes from the run directory it was exported from"
    assert student["eval_label"] == "student"
    assert student["accuracy"]["robust"] == pytest.approx(0.60) and student["verified"]
    for name in ("pareto.png", "eps_curve.png", "reliability-1.png", "index.html", "report.md"):
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    # self-contained: the PNGs are inline, nothing is fetched, and the page may not fetch anything
    for png in ("pareto.png", "eps_curve.png", "reliability-1.png"):
        assert base64.b64encode((out / png).read_bytes()).decode() in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "default-src 'none'" in page
    assert "<script" not in page
    assert "60.00%" in page and "[57.0, 63.0]" in page and "Square 1000 queries" in page
    assert "builtin:fmnist-teacher" in page and sha(folders["teacher"] / "model.onnx") in page
    markdown = (out / "report.md").read_text()
    assert "![Pareto front](pareto.png)" in markdown and "student (fp32)" in markdown


def test_only_an_unchanged_file_counts_as_verified(folders: dict[str, Path], tmp_path: Path) -> None:
    tiny_onnx(folders["teacher"] / "model.onnx", channels=16, seed=99)  # swapped after verify
    data = build_report([folders["student"], folders["teacher"]], tmp_path / "r")
    teacher = next(m for m in data["models"] if m["label"] == "teacher (fp32)")
    assert not teacher["verified"] and "changed since it was verified" in teacher["status"]
    assert not teacher["front_bytes"] and not teacher["front_p50_ms"]


def test_unverified_exports_and_bare_runs_are_listed_outside_the_front(tmp_path: Path) -> None:
    folder = export_folder(tmp_path, "fresh", robust={"fp32": 0.5}, p50={}, verified=False)
    run = run_dir(tmp_path, "alone", curve=False)
    data = build_report([folder, run], tmp_path / "r")
    models = {m["label"]: m for m in data["models"]}
    assert "not verified" in models["fresh (fp32)"]["status"]
    assert "torch figures only" in models["alone (torch)"]["status"]
    assert not any(m["front_bytes"] or m["front_p50_ms"] for m in data["models"])
    assert "pareto" not in data["plots"]
    assert any("no model has a verified robust accuracy" in note for note in data["notes"])


def test_hostile_report_is_escaped_and_typed(tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>|`x`$\\frac{a}{b}$ ![img](http://evil.example/x.png)\n# heading"
    folder = export_folder(tmp_path / "exports", "victim", robust={"fp32": 0.5}, p50={"fp32": 0.1})
    report = json.loads((folder / "report.json").read_text())
    report["source"].update(run=evil, checkpoint="../../../../etc/passwd", role=evil, params="many")
    report["source"]["arch"] = {"name": evil}
    report["source"]["teachers"] = [{"source": evil, "sha256": evil, "weight": "heavy"}, "not a dict", None]
    verify = report["verify"]
    verify["models"]["model.onnx"].update(clean_acc="1.0", transfer_acc=float("nan"), square_acc=7, robust_ci95="x")
    verify["settings"]["norm"] = evil
    verify["latency"] = ["not", "a", "dict"]
    (folder / "report.json").write_text(json.dumps(report))  # NaN is written as NaN: Python's json reads it
    out = tmp_path / "r"
    result = invoke(str(folder), "--out", str(out))
    assert result.exit_code == 0, result.output
    page = (out / "index.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'src="http' not in page and "href=" not in page
    markdown = (out / "report.md").read_text()
    assert "<script>" not in markdown and "&lt;script&gt;" in markdown
    assert "![img](http" not in markdown, "a Markdown image from the file would be fetched by a viewer"
    data = json.loads((out / "report.json").read_text())
    (model,) = data["models"]
    assert model["accuracy"]["clean"] is None and model["accuracy"]["transfer"] is None
    assert model["accuracy"]["square"] is None and model["ci95"]["robust"] == [None, None]
    assert model["params"] is None and model["p50_ms"] is None
    assert model["accuracy"]["robust"] == pytest.approx(0.5) and model["verified"]
    assert not (tmp_path / "etc").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "is not a folder"),
        (lambda p: p.mkdir(), "not an akd-edge folder"),
        (lambda p: (p.mkdir(), (p / "report.json").write_text("{oops")), "cannot read"),
        (lambda p: (p.mkdir(), (p / "report.json").write_text("[1, 2]")), "JSON list"),
        (lambda p: (p.mkdir(), (p / "report.json").write_text('{"format": "other/1"}')), "not an akd-edge folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, setup: Any, message: str) -> None:
    path = tmp_path / "input"
    setup(path)
    out = tmp_path / "r"
    result = invoke(str(path), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 3  # one message (rich may wrap it)
    assert not out.exists(), "nothing is written when an input is refused"


def test_out_that_akd_edge_did_not_write_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = invoke(str(folders["student"]), "--out", str(mine))
    assert result.exit_code == 2 and "did not write" in result.output
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    result = invoke(str(folders["run"]), "--out", str(folders["run"]))
    assert result.exit_code == 2


def test_rewriting_a_report_removes_only_its_own_stale_files(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r"
    build_report([folders["run"], folders["student"]], out)
    assert (out / "reliability-1.png").is_file()
    (out / "mine.txt").write_text("a file the user put there")
    build_report([folders["student"]], out)  # no run directory: no eval plots this time
    assert not (out / "reliability-1.png").exists() and not (out / "eps_curve.png").exists()
    assert (out / "mine.txt").read_text() == "a file the user put there"
    assert (out / "pareto.png").is_file()


# -- plots that show their uncertainty -----------------------------------------------------------------------


def test_pareto_panel_draws_intervals_on_an_axis_wider_than_them() -> None:
    """Two int8/fp32 points 0.2 points apart with +-4-point intervals: error bars are drawn and the axis holds
    the intervals with at least 10 points of span, so the difference does not fill the plot."""
    from matplotlib.container import ErrorbarContainer

    from akd_edge.evaluation import plots

    points = [
        {"label": "a (fp32)", "robust": 0.704, "robust_ci95": [0.664, 0.744], "bytes": 100_000, "precision": "fp32"},
        {"label": "a (int8)", "robust": 0.706, "robust_ci95": [0.666, 0.746], "bytes": 36_000, "precision": "int8"},
    ]
    low, high = plots.robust_axis(points)
    assert low <= 66.4 and high >= 74.6 and high - low >= plots.PARETO_MIN_SPAN
    bare_low, bare_high = plots.robust_axis([{"robust": 0.7047}, {"robust": 0.7052}])  # no intervals: still 10 wide
    assert bare_high - bare_low >= plots.PARETO_MIN_SPAN
    plt = plots._pyplot()
    fig, ax = plt.subplots()
    plots._pareto_panel(ax, points, "bytes", "size", 1 / 1024)
    assert sum(isinstance(c, ErrorbarContainer) for c in ax.containers) == 2
    assert ax.get_ylim() == pytest.approx((low, high))
    plt.close(fig)


def test_eps_curve_has_error_bars_and_marks_the_threat_eps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from akd_edge.evaluation import plots

    drawn: dict[str, Any] = {}
    real = plots._save

    def keep(fig: Any, path: Path, rect: Any = (0, 0, 1, 1)) -> Path:
        ax = fig.axes[0]
        drawn["bars"] = len(ax.containers)
        drawn["vlines"] = [line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
        return real(fig, path, rect)

    monkeypatch.setattr(plots, "_save", keep)
    points = [{"eps": 0.0, "acc": 0.9, "ci95": [0.88, 0.92]}, {"eps": 0.1, "acc": 0.5, "ci95": [0.47, 0.53]}]
    plots.plot_eps_curve({"student": points}, tmp_path / "curve.png", threat_eps=[0.1])
    assert drawn == {"bars": 1, "vlines": [0.1]} and (tmp_path / "curve.png").is_file()


def test_report_reads_eps_intervals_and_threat_and_notes_a_failed_int8(tmp_path: Path) -> None:
    run = run_dir(tmp_path, "student", curve=False)
    points = [{"eps": 0.0, "acc": 0.9, "ci95": [0.88, 0.92]}, {"eps": 0.1, "acc": 0.5, "ci95": [0.47, 0.53]}]
    evaluation = {"threat": {"norm": "linf", "eps": 0.1}, "results": {"eps_curve": {"points": points}}}
    (run / "eval.json").write_text(json.dumps(evaluation))
    folder = export_folder(tmp_path / "export", "student", robust={"fp32": 0.6}, p50={"fp32": 0.1})
    report = json.loads((folder / "report.json").read_text())
    action = "int8 and fp32 agree on 99.44% of 10000 test images, below --min-int8-agreement 99.50%: not written"
    report["checks"] = {"int8_agreement": {"passed": False, "kept": False, "action": action}}
    (folder / "report.json").write_text(json.dumps(report))
    out = tmp_path / "report"
    data = build_report([run, folder], out)
    curve = data["curves"]["student"]
    assert curve["threat_eps"] == 0.1 and curve["points"][1]["ci95"] == [0.47, 0.53]
    assert f"student: {action}" in (out / "report.md").read_text()


def test_report_notes_an_export_whose_int8_is_not_faster_and_shows_stage_times(tmp_path: Path) -> None:
    folder = export_folder(tmp_path / "export", "student", robust={"fp32": 0.6}, p50={"fp32": 0.1})
    report = json.loads((folder / "report.json").read_text())
    advice = "int8 is not faster than fp32 on this machine (0.80x ...): use model.onnx (fp32) for speed"
    report["checks"] = {"int8_speed": {"int8_faster": False, "advice": advice}}
    (folder / "report.json").write_text(json.dumps(report))
    stages = [
        {"key": "distill", "title": "distill tiny", "ran": False, "seconds": 0.01, "seconds_when_run": 61.5},
        {"key": "export/tiny", "title": "export tiny", "ran": True, "seconds": 4.25},
    ]
    out = tmp_path / "report"
    data = build_report([folder], out, stages=stages)
    assert f"student: {advice}" in data["notes"]
    markdown = (out / "report.md").read_text()
    assert f"student: {advice}" in markdown and "## Pipeline stages" in markdown
    assert "| distill tiny | skipped | 0.0 s (61.5 s when it ran) |" in markdown
    assert "| export tiny | ran | 4.2 s |" in markdown and "| total |  | 4.3 s |" in markdown
    assert data["stages"] == stages and "Pipeline stages" in (out / "index.html").read_text()
