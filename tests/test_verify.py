"""Verify: the numpy Square attack, the onnxruntime-only path, worst-case accounting and clear errors."""

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

from akd_edge.errors import DataError
from akd_edge.export import export_checkpoint
from akd_edge.models import create_model
from akd_edge.train.checkpoint import save_atomic
from akd_edge.verify.report import verify_export
from akd_edge.verify.runtime import ModelFileError, OrtClassifier
from akd_edge.verify.square import square_attack

SHAPE = (1, 12, 12)
SYNTH = "n=500,test=200,shape=1x12x12,classes=10,noise=0.25,seed=5"


# ---------------------------------------------------------------- Square attack (numpy)


def linear_model(seed: int = 0, classes: int = 4, shape: tuple[int, ...] = (1, 8, 8)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((int(np.prod(shape)), classes)) * 0.5, rng.standard_normal(classes) * 0.1


def make_predict(weights: np.ndarray, bias: np.ndarray, counter: list[int] | None = None):  # noqa: ANN201
    def predict(x: np.ndarray) -> np.ndarray:
        if counter is not None:
            counter[0] += len(x)
        return x.reshape(len(x), -1) @ weights + bias

    return predict


def labelled_points(predict, n: int = 40, shape: tuple[int, ...] = (1, 8, 8), seed: int = 1):  # noqa: ANN001, ANN201
    x = np.random.default_rng(seed).random((n, *shape), dtype=np.float32)
    return x, predict(x).argmax(1)  # labels = the model's own predictions: clean accuracy 100%


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.5)])
def test_square_fools_weak_model_within_budget(norm: str, eps: float) -> None:
    predict = make_predict(*linear_model())
    x, y = labelled_points(predict)
    result = square_attack(predict, x, y, eps=eps, norm=norm, n_queries=300, seed=0)
    assert result.fooled.mean() > 0.5  # a linear model with no margin is easy to fool
    assert np.array_equal(result.fooled, predict(result.x_adv).argmax(1) != y)
    assert result.x_adv.dtype == np.float32 and result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    diff = (result.x_adv - x).reshape(len(x), -1).astype(np.float64)
    size = np.abs(diff).max(1) if norm == "linf" else np.sqrt((diff**2).sum(1))
    assert size.max() <= eps + 1e-5
    assert (result.queries[result.fooled] >= 1).all() and result.queries.max() <= 301


def test_square_takes_uint8_images_as_the_same_images_in_0_1() -> None:
    """Datasets hold uint8 images: eps must stay relative to [0, 1], not to the 0-255 byte values."""
    predict = make_predict(*linear_model(seed=5))
    x_bytes = np.random.default_rng(6).integers(0, 256, (30, 1, 8, 8), dtype=np.uint8)
    x = x_bytes.astype(np.float32) / 255
    y = predict(x).argmax(1)
    from_bytes = square_attack(predict, x_bytes, y, eps=0.05, n_queries=100, seed=0)
    from_floats = square_attack(predict, x, y, eps=0.05, n_queries=100, seed=0)
    assert np.array_equal(from_bytes.x_adv, from_floats.x_adv)
    assert np.abs(from_bytes.x_adv - x).max() <= 0.05 + 1e-6


def test_square_more_queries_never_hurt_and_is_seeded() -> None:
    predict = make_predict(*linear_model(seed=2))
    x, y = labelled_points(predict, seed=3)
    few = square_attack(predict, x, y, eps=0.03, n_queries=20, seed=7)
    many = square_attack(predict, x, y, eps=0.03, n_queries=400, seed=7)
    again = square_attack(predict, x, y, eps=0.03, n_queries=400, seed=7)
    assert many.fooled.sum() >= few.fooled.sum()
    assert np.array_equal(many.x_adv, again.x_adv)


def test_square_eps_zero_and_misclassified_untouched() -> None:
    counter = [0]
    predict = make_predict(*linear_model(seed=4), counter=counter)
    x, y = labelled_points(predict)
    y = y.copy()
    y[:5] = (y[:5] + 1) % 4  # already misclassified: no queries spent on them
    zero = square_attack(predict, x, y, eps=0.0, n_queries=50)
    assert np.array_equal(zero.x_adv, x) and zero.fooled.sum() == 5
    result = square_attack(predict, x, y, eps=0.2, n_queries=50)
    assert np.array_equal(result.x_adv[:5], x[:5]) and (result.queries[:5] == 0).all()
    assert result.fooled[:5].all()


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


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained tiny student exported with int8; returns (export folder, checkpoint)."""
    from akd_edge.data import get_loader

    torch.manual_seed(0)
    data = get_loader("synthetic")(SYNTH, parts=("train",))
    x = torch.from_numpy(data.train.images.astype(np.float32) / 255.0)
    y = torch.from_numpy(data.train.labels)
    model = create_model("cnn-student", num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(4):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
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
    verify = verify_export(folder, n=64, square_queries=100, latency_repeats=5)
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
    assert "robust (worst case)" in (folder / "MODEL_CARD.md").read_text()


def test_square_beating_transfer_warns(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """Examples transferred from an unrelated (untrained) model are weak; Square is not: that gap is flagged."""
    folder, _ = exported
    torch.manual_seed(1)
    unrelated = save_checkpoint(
        create_model("cnn-student", num_classes=10, input_shape=SHAPE, mean=[0.5], std=[0.25]), tmp_path / "u.pt"
    )
    verify = verify_export(
        folder, n=48, eps=0.3, square_queries=150, checkpoint=str(unrelated), latency=False, write=False
    )
    fp32 = verify["models"]["model.onnx"]
    assert fp32["square_acc"] < fp32["transfer_acc"] - 0.02
    assert any("gradient masking" in w and "model.onnx" in w for w in verify["warnings"])
    check_ordering(verify["models"])


def test_onnxruntime_only_path_without_torch(exported: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = exported
    from akd_edge.data import get_loader

    test = get_loader("synthetic")(SYNTH, parts=("test",)).test
    np.savez(tmp_path / "test.npz", images=test.images[:40], labels=test.labels[:40])
    script = textwrap.dedent(
        f"""
        import json, sys
        sys.modules["torch"] = None  # any import of torch now fails
        import akd_edge.verify.runtime
        import akd_edge.data
        assert "torch" not in sys.modules or sys.modules["torch"] is None
        from akd_edge.verify.report import verify_export
        verify = verify_export({str(folder)!r}, data={str(tmp_path / "test.npz")!r}, square_queries=50,
                               latency_repeats=3, write=False)
        from click.testing import CliRunner
        from akd_edge.cli.export_cmd import verify_cmd
        cli = CliRunner().invoke(verify_cmd, [{str(folder)!r}, "--data", {str(tmp_path / "test.npz")!r},
                                              "--square-queries", "20", "--no-latency", "--json"])
        print(json.dumps({{"verify": verify, "cli_code": cli.exit_code, "cli": cli.output}}))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    verify = result["verify"]
    assert "torch" in verify["settings"]["transfer"]["skipped"]
    assert verify["n"] == 40
    for res in verify["models"].values():
        assert res["transfer_acc"] is None and res["robust_acc"] <= res["square_acc"] <= res["clean_acc"]
    assert "torch eager (fp32)" not in verify["latency"] and "model.onnx" in verify["latency"]
    assert result["cli_code"] == 0, result["cli"]


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
    from akd_edge.cli.export_cmd import verify_cmd

    folder, _ = exported
    runner = CliRunner()
    missing = runner.invoke(verify_cmd, [str(tmp_path / "gone")])
    assert missing.exit_code == 2 and "gone" in missing.output
    ok = runner.invoke(
        verify_cmd, [str(folder), "--n", "16", "--square-queries", "10", "--transfer", "none", "--no-latency"]
    )
    assert ok.exit_code == 0, ok.output
    assert "model.int8.onnx" in ok.output
