"""Verify: the official Square on onnxruntime sessions, worst-case accounting, the torch-free path, clear errors.

The Square attack itself (pyautoattack through ``run_square``) is tested in test_autoattack.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from akd_edge.attacks.autoattack import run_square
from akd_edge.core.errors import DataError
from akd_edge.core.interval import format_accuracy, format_interval, wilson_interval
from akd_edge.core.ort import ModelFileError, OrtClassifier
from akd_edge.export import export_checkpoint
from akd_edge.models import create_model
from akd_edge.models.checkpoint import save_atomic
from akd_edge.verify.command import verify_export

SHAPE = (1, 12, 12)
SYNTH = "n=500,test=200,shape=1x12x12,classes=10,noise=0.25,seed=5"


# ---------------------------------------------------------------- an exported tiny model


def save_checkpoint(model: nn.Module, path: Path) -> Path:
    arch = {
        "name": "cnn-student",
        "kwargs": {},
        "num_classes": 10,
        "input_shape": list(SHAPE),
        "mean": [0.5],
        "std": [0.25],
    }
    return save_atomic(
        {
            "format": "akd-edge/1",
            "model": model.state_dict(),
            "arch": arch,
            "data": {"name": "synthetic", "class_names": [f"class-{k}" for k in range(10)], "data_dir": SYNTH},
            "threat": {"norm": "linf", "eps": 0.08},
            "role": "student",
            "epoch": 1,
            "val": {"clean_acc": 0.9, "robust_acc": 0.3},
        },
        path,
    )


def train_tiny(epochs: int) -> nn.Module:
    """A cnn-student trained briefly (Adam, seed 0) on SYNTH's training images, in eval mode."""
    from akd_edge.data import get_loader

    torch.manual_seed(0)
    data = get_loader("synthetic")(SYNTH, parts=("train",))
    x = torch.from_numpy(data.train.images.astype(np.float32) / 255.0)
    y = torch.from_numpy(data.train.labels)
    model = create_model("cnn-student", num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained tiny student exported with int8; returns (export folder, checkpoint)."""
    model = train_tiny(epochs=4)
    root = tmp_path_factory.mktemp("verify")
    ckpt = save_checkpoint(model.eval(), root / "tiny.pt")
    folder, _ = export_checkpoint(ckpt, root / "export", calib=200)
    return folder, ckpt


def check_ordering(models: dict) -> None:
    for res in models.values():
        assert res["robust_acc"] <= res["square_acc"] <= res["clean_acc"]
        if res["transfer_acc"] is not None:
            assert res["robust_acc"] <= res["transfer_acc"] <= res["clean_acc"]


def test_verify_worst_case_below_each_attack(exported: tuple[Path, Path]) -> None:
    folder, _ = exported
    verify = verify_export(folder, data_dir=SYNTH, n=64, square_queries=100, latency_repeats=5)
    assert set(verify["models"]) == {"model.onnx", "model.int8.onnx"}
    check_ordering(verify["models"])
    fp32 = verify["models"]["model.onnx"]
    assert fp32["clean_acc"] > 0.7 and fp32["transfer_acc"] is not None
    transfer = verify["settings"]["transfer"]
    assert transfer["version"] == "fast" and transfer["attacks"] == ["apgd-ce", "apgd-t"] and transfer["eps"] == 0.08
    assert verify["settings"]["square"]["n_queries"] == 100 and verify["n"] == 64
    lat = verify["latency"]
    assert {"torch eager (fp32)", "model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort"} <= set(lat)
    for res in lat.values():
        assert 0 < res["batch1_p50_ms"] <= res["batch1_p95_ms"]
    assert lat["model.onnx"]["throughput_batch"] == 256 and lat["model.onnx"]["throughput_img_s"] > 0
    assert lat["model.int8.onnx"]["bytes"] < lat["model.onnx"]["bytes"]
    saved = json.loads((folder / "report.json").read_text())
    assert saved["verify"]["models"] == verify["models"]
    assert saved["checks"]["parity"]["passed"]  # export sections are kept
    card = (folder / "MODEL_CARD.md").read_text()
    assert "robust (worst case)" in card and "95% Wilson score interval" in card
    # every accuracy carries its 95% Wilson interval, in report.json and on the model card
    for res in verify["models"].values():
        for key in ("clean", "transfer", "square", "robust"):
            low, high = res[f"{key}_ci95"]
            assert res[f"{key}_ci95"] == wilson_interval(round(res[f"{key}_acc"] * 64), 64)
            assert low <= res[f"{key}_acc"] <= high
        assert format_accuracy(res["robust_acc"], res["robust_ci95"]) in card
    assert transfer["torch_robust_ci95"] == wilson_interval(round(transfer["torch_robust_acc"] * 64), 64)


def test_square_beating_transfer_warns(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Examples transferred from an unrelated (untrained) model are weak; Square is not: that gap is flagged."""
    folder, _ = exported
    torch.manual_seed(1)
    unrelated = save_checkpoint(
        create_model("cnn-student", num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25]), tmp_path / "u.pt"
    )
    verify = verify_export(
        folder, data_dir=SYNTH, n=48, eps=0.3, square_queries=150, checkpoint=str(unrelated), latency=False, write=False
    )
    fp32 = verify["models"]["model.onnx"]
    assert fp32["square_acc"] < fp32["transfer_acc"] - 0.02
    assert any("gradient masking" in w and "model.onnx" in w for w in verify["warnings"])
    check_ordering(verify["models"])


def test_square_attacks_the_onnxruntime_session_itself(exported: tuple[Path, Path]) -> None:
    """The session wrapped as a tensor function: Square needs its outputs only, never a gradient."""
    folder, _ = exported
    from akd_edge.data import get_loader

    test = get_loader("synthetic")(SYNTH, parts=("test",)).test
    session = OrtClassifier.load(folder / "model.int8.onnx")  # int8: no torch twin to take gradients from
    x = torch.from_numpy(test.images[:48].astype(np.float32) / 255)
    y = torch.from_numpy(test.labels[:48])
    result = run_square(session.torch_predict(), x, y, eps=0.3, n_queries=100)
    assert torch.equal(result.clean, torch.from_numpy(session.correct(test.images[:48], test.labels[:48])))
    assert result.robust.sum() < result.clean.sum()
    assert (result.x_adv - x).abs().max() <= 0.3 + 1e-6
    assert torch.equal(result.robust, torch.from_numpy(session.correct(result.x_adv.numpy(), y.numpy())))


def _fooling(predict, x: np.ndarray, label: int) -> np.ndarray:  # noqa: ANN001
    """An image of ``x`` that ``predict`` (logits) classifies as anything but ``label``."""
    return x[np.flatnonzero(np.asarray(predict(x)).argmax(1) != label)[0]]


def test_worst_case_is_per_sample_over_the_attacks(
    exported: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Square and transfer fool different samples: the worst case loses both, below either attack alone."""
    from akd_edge.verify import attacks as verify_attacks
    from akd_edge.verify import transfer as verify_transfer

    folder, _ = exported
    models = [OrtClassifier.load(folder / name) for name in ("model.onnx", "model.int8.onnx")]

    def fake_transfer(model, images, labels, **kwargs):  # noqa: ANN001, ANN003, ANN202
        x = images.astype(np.float32) / 255
        correct = np.logical_and.reduce([m.correct(x, labels) for m in models])
        second = np.flatnonzero(correct)[1]  # the second sample every model gets right falls to transfer only
        x_adv = x.copy()
        x_adv[second] = _fooling(lambda v: np.stack([m.predict(v) for m in models]).sum(0), x, labels[second])
        assert not any(m.correct(x_adv[second : second + 1], labels[second : second + 1]) for m in models)
        return x_adv, {"version": "fake"}
        yield  # a job of no tasks

    def fake_square(predict, x, y, **kwargs):  # noqa: ANN001, ANN003, ANN202
        result = run_square(predict, x, y, **{**kwargs, "n_queries": 1, "eps": 1e-9})
        assert torch.equal(result.robust, result.clean)  # eps ~0: nothing fooled yet
        first = result.clean.nonzero()[0, 0]  # the first correct sample falls to Square only
        result.x_adv[first] = torch.from_numpy(
            _fooling(lambda v: predict(torch.from_numpy(v)), x.numpy(), int(y[first]))
        )
        return result

    monkeypatch.setattr(verify_transfer, "transfer_job", fake_transfer)
    monkeypatch.setattr(verify_attacks, "square_runner", lambda queries: fake_square)
    verify = verify_export(folder, data_dir=SYNTH, n=40, latency=False, write=False)
    for res in verify["models"].values():
        clean_n = round(res["clean_acc"] * 40)
        assert round(res["square_acc"] * 40) == round(res["transfer_acc"] * 40) == clean_n - 1
        assert res["robust_n"] == clean_n - 2 and res["robust_acc"] == (clean_n - 2) / 40
    check_ordering(verify["models"])


def test_onnxruntime_runs_the_models_without_torch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """The ONNX models run without torch (clean accuracy, latency); Square needs torch and says so first."""
    folder, _ = exported
    from akd_edge.data import get_loader

    test = get_loader("synthetic")(SYNTH, parts=("test",)).test
    np.savez(tmp_path / "test.npz", images=test.images[:40], labels=test.labels[:40])
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch now fails
        import akd_edge.core.ort
        import akd_edge.data
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        from akd_edge.core.errors import UsageError
        from akd_edge.verify.command import verify_export
        try:
            verify_export({str(folder)!r}, data={str(tmp_path / "test.npz")!r}, square_queries=50, write=False)
            refused = ""
        except UsageError as err:
            refused = str(err)
        verify = verify_export({str(folder)!r}, data={str(tmp_path / "test.npz")!r}, square_queries=0,
                               transfer="none", latency_repeats=3, write=False)
        from click.testing import CliRunner
        from akd_edge.cli.verify_cmd import verify_cmd
        args = [{str(folder)!r}, "--data", {str(tmp_path / "test.npz")!r}, "--no-latency", "--json"]
        cli = CliRunner().invoke(verify_cmd, args + ["--square-queries", "0", "--transfer", "none"])
        cli_square = CliRunner().invoke(verify_cmd, args + ["--square-queries", "20"])
        print(json.dumps({{"verify": verify, "refused": refused, "cli_code": cli.exit_code, "cli": cli.output,
                          "square_code": cli_square.exit_code, "square_out": cli_square.output}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "needs torch" in result["refused"] and "--square-queries 0" in result["refused"]
    verify = result["verify"]
    assert verify["n"] == 40 and verify["settings"]["square"] == {"skipped": "--square-queries 0"}
    for res in verify["models"].values():
        assert 0.5 < res["clean_acc"] <= 1.0
        assert res["square_acc"] is None and res["transfer_acc"] is None
        assert res["robust_acc"] is None  # no attack ran: clean accuracy is not passed off as robust
    assert "torch eager (fp32)" not in verify["latency"] and "model.onnx" in verify["latency"]
    assert result["cli_code"] == 0, result["cli"]
    assert result["square_code"] == 2 and "needs torch" in result["square_out"]


# ---------------------------------------------------------------- bad input


def test_bad_inputs_name_the_file(exported: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = exported
    with pytest.raises(ModelFileError, match="nowhere"):
        verify_export(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFileError, match=r"model\.onnx does not exist"):
        verify_export(empty)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes((folder / "model.onnx").read_bytes()[:300])
    with pytest.raises(ModelFileError, match="corrupt.onnx"):
        OrtClassifier.load(corrupt)
    rgb = np.zeros((4, 3, 32, 32), dtype=np.uint8)
    np.savez(tmp_path / "rgb.npz", images=rgb, labels=np.zeros(4, dtype=np.int64))
    with pytest.raises(DataError, match=r"model\.onnx expects images of shape \[N, 1, 12, 12\].*\[4, 3, 32, 32\]"):
        verify_export(folder, data=str(tmp_path / "rgb.npz"), write=False)
    with pytest.raises(DataError, match="absent.npz"):
        verify_export(folder, data=str(tmp_path / "absent.npz"), write=False)
    with pytest.raises(DataError, match="fashion-mnist"):
        verify_export(folder, data="fashion-mnist", data_dir=str(tmp_path / "no-such-dir"), write=False)


def test_verify_cli_errors_exit_2(exported: tuple[Path, Path], tmp_path: Path) -> None:
    from akd_edge.cli.verify_cmd import verify_cmd

    folder, _ = exported
    runner = CliRunner()
    missing = runner.invoke(verify_cmd, [str(tmp_path / "gone")])
    assert missing.exit_code == 2 and "gone" in missing.output
    ok = runner.invoke(
        verify_cmd,
        [str(folder), "--data-dir", SYNTH, "--n", "16", "--square-queries", "10", "--transfer", "none", "--no-latency"],
        env={"COLUMNS": "200"},
    )
    assert ok.exit_code == 0, ok.output
    assert "model.int8.onnx" in ok.output and "95% Wilson interval" in ok.output
    for res in json.loads((folder / "report.json").read_text())["verify"]["models"].values():
        assert format_interval(res["clean_ci95"]) in ok.output and format_interval(res["robust_ci95"]) in ok.output
