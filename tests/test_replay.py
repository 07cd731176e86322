"""replay.npz: the worst-case examples verify keeps, their replay on other onnxruntime runtimes, and the CLI.

The browser's replay of the same file is in test_web_export.py.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console
from test_verify import SYNTH, exported  # noqa: F401  (tests/ is on sys.path; a module-scoped fixture)

from akd_edge.cli.progress import LINES_PER_TASK, TaskProgress
from akd_edge.core import files
from akd_edge.core.ort import FP32_LOGIT_BOUND, OrtClassifier
from akd_edge.export import export_checkpoint
from akd_edge.export.folder import foreign, replaceable
from akd_edge.verify import replay as replays
from akd_edge.verify.command import ONNX_MODELS, replay_export, verify_export
from akd_edge.verify.replay import Replay, ReplayError, Runtime, read_replay, score

EPS = 0.08
"""The threat model's epsilon recorded in test_verify's checkpoint."""


@pytest.fixture(scope="module")
def verified(exported: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # noqa: F811
    """A copy of the tiny export, verified (transfer and Square) on 64 images: (folder, verify section)."""
    folder = Path(shutil.copytree(exported[0], tmp_path_factory.mktemp("replay") / "export"))
    verify = verify_export(folder, data_dir=SYNTH, n=64, square_queries=60, checkpoint=str(exported[1]), latency=False)
    return folder, verify


@pytest.fixture
def folder(verified: tuple[Path, dict], tmp_path: Path) -> Path:
    """A fresh copy of the verified export, free to damage."""
    return Path(shutil.copytree(verified[0], tmp_path / "export"))


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_verify_keeps_the_worst_case_example_of_every_image(verified: tuple[Path, dict]) -> None:
    folder, verify = verified
    report = _report(folder)
    replay = read_replay(folder, report, ONNX_MODELS)
    # hashed in report.json like the models, and listed in the manifest a re-export may replace
    assert report["files"]["replay.npz"]["sha256"] == files.sha256_file(folder / "replay.npz")
    assert "replay.npz" in files.read_mark(folder)["files"] and foreign(folder) == []
    assert replay.models == ["model.onnx", "model.int8.onnx"] and replay.attacked and len(replay.labels) == 64
    for index, name in enumerate(replay.models):
        model = OrtClassifier.load(folder / name)
        # the examples are in the threat model's ball around their images, and the logits are onnxruntime's
        assert np.abs(replay.examples[index] - replay.images.astype(np.float32) / 255).max() <= EPS + 1e-6
        np.testing.assert_array_equal(model.predict(replay.examples[index]), replay.example_logits[index])
        np.testing.assert_array_equal(model.predict(replay.images), replay.clean_logits[index])
        # replaying them under Python onnxruntime gives verify's robust accuracy exactly
        assert replay.robust(index).sum() == verify["models"][name]["robust_n"]
    section = report["verify"]["replay"]
    assert section["n"] == 64 and section["models"] == replay.models
    (reference,) = section["runtimes"].values()
    assert all(res["verdict"] == "matches" and res["max_abs_logit_diff"] == 0 for res in reference.values())


def test_the_worst_case_is_the_lowest_margin_candidate() -> None:
    """Per image the candidate (clean, then attacks) with the lowest true-class margin is kept."""

    class Fixed:
        def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
            return np.stack([x[:, 0, 0, 0], 1 - x[:, 0, 0, 0]], 1).astype(np.float32)

    labels = np.array([0, 0, 1])
    clean = np.array([0.9, 0.8, 0.1], dtype=np.float32).reshape(3, 1, 1, 1)
    attack_a = np.array([0.6, 0.4, 0.2], dtype=np.float32).reshape(3, 1, 1, 1)
    attack_b = np.array([0.7, 0.7, 0.05], dtype=np.float32).reshape(3, 1, 1, 1)
    examples, clean_logits, logits = replays.worst_case(Fixed(), labels, [clean, attack_a, attack_b])
    assert examples.reshape(-1).tolist() == pytest.approx([0.6, 0.4, 0.2])
    np.testing.assert_array_equal(clean_logits, Fixed().predict(clean))
    assert (logits.argmax(1) == labels).tolist() == [True, False, True]


def _replay(name: str, logits: np.ndarray, labels: np.ndarray) -> Replay:
    n = len(labels)
    images = np.zeros((n, 1, 2, 2), dtype=np.uint8)
    return Replay(images, labels, [name], np.zeros((1, n, 1, 2, 2), np.float32), logits[None], logits[None], True)


@pytest.mark.parametrize(
    ("name", "shift", "flips", "expected"),
    [
        ("model.onnx", 5e-4, 0, "matches"),
        ("model.onnx", 1e-2, 0, "mismatch"),  # fp32 has no int8 allowance
        ("model.int8.onnx", 0.15, 0, "within tolerance"),  # the fused-kernel difference the issue measured
        ("model.int8.onnx", 0.15, 1, "within tolerance"),  # 1 near-tie of 100 flips: 99.5% agree, 1 point
        ("model.int8.onnx", 0.15, 3, "mismatch"),  # 3 flips: robust accuracy 3 points off
        ("model.int8.onnx", 0.6, 0, "mismatch"),  # beyond 5% of the largest |logit| (10)
    ],
)
def test_score_tolerances_per_precision(name: str, shift: float, flips: int, expected: str) -> None:
    labels = np.arange(100) % 10
    logits = np.full((100, 10), -5.0, dtype=np.float32)
    logits[np.arange(100), labels] = 10.0
    runner_up = (labels + 1) % 10
    logits[np.arange(3), runner_up[:3]] = 9.95  # three near-ties, where a small difference may flip the argmax
    runtime = logits + shift
    runtime[np.arange(flips), runner_up[:flips]] += 0.1
    result = score(_replay(name, logits, labels), 0, logits, runtime)
    assert result["verdict"] == expected, result
    assert result["argmax_disagreements"] == flips and result["reference_robust_acc"] == 1.0
    assert result["robust_acc"] == 1 - flips / 100
    assert result["logit_bound"] == (FP32_LOGIT_BOUND if name == "model.onnx" else pytest.approx(0.5))


def test_other_runtimes_cover_levels_ort_files_and_installed_providers(tmp_path: Path) -> None:
    runtimes = replays.other_runtimes(
        tmp_path, ["AzureExecutionProvider", "XnnpackExecutionProvider", "CPUExecutionProvider"]
    )
    labels = [r.label for r in runtimes]
    assert labels == [
        "CPU ORT_DISABLE_ALL",
        "CPU ORT_ENABLE_BASIC",
        "CPU ORT_ENABLE_EXTENDED",
        "Xnnpack ORT_ENABLE_ALL",
    ]
    (tmp_path / "model.ort").write_bytes(b"")
    assert "CPU ORT_ENABLE_ALL (.ort files)" in [r.label for r in replays.other_runtimes(tmp_path, [])]
    assert Runtime("CPUExecutionProvider", "ORT_ENABLE_ALL", mobile=True).file_of("model.int8.onnx") == "model.int8.ort"


def test_replay_cli_prints_a_table_per_runtime_and_records_them(folder: Path) -> None:
    from akd_edge.cli.verify_cmd import verify_cmd

    result = CliRunner().invoke(verify_cmd, [str(folder), "--replay"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    section = _report(folder)["verify"]["replay"]
    expected = ["CPU ORT_DISABLE_ALL", "CPU ORT_ENABLE_BASIC", "CPU ORT_ENABLE_EXTENDED", "(.ort files)"]
    for label in expected:
        assert sum(label in runtime for runtime in section["runtimes"]) == 1, section["runtimes"].keys()
        assert f"{label}: 64 worst-case examples" in text or f"{label} (.ort files)" in text
    assert len(section["runtimes"]) == 1 + len(expected)  # the reference (verify) and the others
    for runtime, models in section["runtimes"].items():
        assert set(models) == {"model.onnx", "model.int8.onnx"}, runtime
        fp32 = models["model.onnx"]
        assert fp32["verdict"] == "matches" and fp32["max_abs_logit_diff"] <= FP32_LOGIT_BOUND
        assert abs(models["model.int8.onnx"]["robust_acc"] - models["model.int8.onnx"]["reference_robust_acc"]) <= 0.01
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Robust accuracy replayed on other runtimes" in card
    assert all(runtime in card for runtime in section["runtimes"])
    assert _report(folder)["files"]["replay.npz"]["sha256"] == files.sha256_file(folder / "replay.npz")


def test_api_replay_returns_the_section_and_writes_only_when_asked(folder: Path) -> None:
    import akd_edge as ae

    before = (folder / "report.json").read_bytes()
    stages: list[str] = []
    section = ae.replay(folder, threads=1, write=False, on_stage=stages.append)
    assert (folder / "report.json").read_bytes() == before, "write=False wrote report.json"
    assert len(stages) == len(section["runtimes"]) - 1 and all("replaying 64 examples on" in s for s in stages)
    for models in section["runtimes"].values():
        assert models["model.onnx"]["verdict"] == "matches"
    assert ae.replay(folder, threads=1)["runtimes"].keys() == section["runtimes"].keys()
    assert _report(folder)["verify"]["replay"]["runtimes"].keys() == section["runtimes"].keys()


def test_a_changed_missing_or_pickled_replay_file_is_refused(folder: Path, tmp_path: Path) -> None:
    report = _report(folder)
    data = bytearray((folder / "replay.npz").read_bytes())
    data[-30] ^= 1
    (folder / "replay.npz").write_bytes(bytes(data))
    with pytest.raises(ReplayError, match="does not match the SHA-256"):
        replay_export(folder, write=False)
    # a file that needs pickle is never unpickled, even with a matching SHA-256
    np.savez(folder / "replay.npz", **{key: np.array([object()], dtype=object) for key in replays.KEYS})
    report["files"]["replay.npz"]["sha256"] = files.sha256_file(folder / "replay.npz")
    (folder / "report.json").write_text(json.dumps(report))
    with pytest.raises(ReplayError, match="cannot read"):
        replay_export(folder, write=False)
    # a link to a file elsewhere is not read, whatever it holds
    outside = tmp_path / "outside.npz"
    (folder / "replay.npz").replace(outside)
    (folder / "replay.npz").symlink_to(outside)
    with pytest.raises(ReplayError, match="symbolic link"):
        replay_export(folder, write=False)
    del report["files"]["replay.npz"]
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "replay.npz").unlink()
    from akd_edge.cli.verify_cmd import verify_cmd

    result = CliRunner().invoke(verify_cmd, [str(folder), "--replay"])
    assert result.exit_code == 2 and "run `akd-edge verify" in " ".join(result.output.split())


def test_replay_values_are_checked(folder: Path) -> None:
    with np.load(folder / "replay.npz", allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in replays.KEYS}
    bad = {**arrays, "examples": arrays["examples"] + 2}
    with pytest.raises(ReplayError, match=r"outside \[0, 1\]"):
        replays._checked(folder / "replay.npz", bad, ONNX_MODELS)
    with pytest.raises(ReplayError, match="not export model files"):
        replays._checked(folder / "replay.npz", {**arrays, "models": np.array(["../x.onnx", "y"])}, ONNX_MODELS)


def test_a_verified_export_can_be_exported_again(
    exported: tuple[Path, Path],  # noqa: F811
    folder: Path,
) -> None:
    """replay.npz is in the manifest: a re-export replaces it with the rest of the folder."""
    assert replaceable(folder) == "export"
    export_checkpoint(exported[1], folder, calib=64, web=False)
    assert not (folder / "replay.npz").exists() and _report(folder)["verify"] is None


def test_progress_off_a_terminal_prints_a_line_per_tenth() -> None:
    stream = io.StringIO()
    with TaskProgress(Console(file=stream, width=200), "verify") as progress:
        progress.stage("Square")
        for done in range(0, 1001, 7):
            progress.advance("Square model.int8.onnx", done, 1000)
        progress.advance("Square model.int8.onnx", 1000, 1000)
    lines = stream.getvalue().splitlines()
    assert len(lines) == LINES_PER_TASK and lines[-1].startswith("verify: Square model.int8.onnx 1000/1000 (100%)")


def test_verify_cli_shows_progress_and_full_model_names(folder: Path) -> None:
    from akd_edge.cli.verify_cmd import verify_cmd

    args = [str(folder), "--data-dir", SYNTH, "--n", "16", "--square-queries", "20", "--transfer", "none"]
    result = CliRunner().invoke(verify_cmd, [*args, "--no-latency"], env={"COLUMNS": "72"})
    assert result.exit_code == 0, result.output
    assert "verify: Square model.int8.onnx 20/20 (100%)" in result.output  # CliRunner is not a terminal
    assert "model.int8.onnx " in result.output and "model.int8.on…" not in result.output
    assert "--replay" in " ".join(result.output.split())


def test_export_readme_replay_snippet_runs_on_a_verified_export(
    verified: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Python block of export/README.md that writes a model's examples for an app: it runs, its files hold
    the examples and labels, and the robust accuracy it prints is verify's."""
    import re

    readme = (Path(__file__).resolve().parents[1] / "export" / "README.md").read_text()
    (code,) = re.findall(
        r"tests/test_replay.py runs this block on one\) -->\n```python\n(.*?)^```", readme, re.S | re.M
    )
    folder, verify = verified
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace('"export/fmnist-quickstart"', repr(str(folder))), "export/README.md", "exec"), {})
    replay = read_replay(folder, _report(folder), ONNX_MODELS)
    examples = np.fromfile(tmp_path / "replay-examples.f32", dtype="<f4").reshape(replay.examples.shape[1:])
    np.testing.assert_array_equal(examples, replay.examples[1])
    np.testing.assert_array_equal(np.fromfile(tmp_path / "replay-labels.i32", dtype="<i4"), replay.labels)
    robust = verify["models"]["model.int8.onnx"]["robust_acc"]
    assert f"model.int8.onnx: robust accuracy {robust:.2%} under onnxruntime in Python" in capsys.readouterr().out


def test_progress_on_a_terminal_draws_a_bar_per_attack_and_model() -> None:
    stream = io.StringIO()
    with TaskProgress(Console(file=stream, width=120, force_terminal=True), "verify") as progress:
        progress.stage("Square attack (20 queries) on model.onnx")
        progress.advance("transfer (AutoAttack fast)", 50, 100)
        progress.advance("Square model.onnx", 10, 20)
        bars = {task.description: (task.completed, task.total) for task in progress.bars.tasks}
    assert bars == {
        "Square attack (20 queries) on model.onnx": (0, None),
        "transfer (AutoAttack fast)": (50, 100),
        "Square model.onnx": (10, 20),
    }
    assert "verify: " not in stream.getvalue()  # no plain lines on a terminal
