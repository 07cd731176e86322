"""Verify refuses what would fake a result: swapped models, NaN epsilons, NaN images, hostile reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from akd_edge.core.errors import DataError, UsageError
from akd_edge.core.ort import ModelFileError
from akd_edge.export import ExportData, export_checkpoint
from akd_edge.models import create_model
from akd_edge.models.checkpoint import save_atomic
from akd_edge.verify.command import verify_export

SHAPE = (1, 12, 12)
FAST = {"n": 16, "square_queries": 5, "transfer": "none", "latency": False}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny model exported fp32-only, and an .npz of 16 images it can be verified on."""
    root = tmp_path_factory.mktemp("verify-safety")
    torch.manual_seed(0)
    model = create_model("cnn-student", num_classes=4, input_shape=SHAPE, mean=[0.5], std=[0.25])
    arch = {
        "name": "cnn-student",
        "kwargs": {},
        "num_classes": 4,
        "input_shape": list(SHAPE),
        "mean": [0.5],
        "std": [0.25],
    }
    ckpt = {
        "format": "akd-edge/1",
        "model": model.state_dict(),
        "arch": arch,
        "data": {"name": "synthetic", "class_names": ["a", "b", "c", "d"], "data_dir": ""},
        "threat": {"norm": "linf", "eps": 0.1},
        "role": "student",
    }
    path = save_atomic(ckpt, root / "tiny.pt")
    x = np.random.default_rng(0).integers(0, 256, (16, *SHAPE), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 4, 16)
    np.savez(root / "data.npz", images=x, labels=y)
    folder, _ = export_checkpoint(path, root / "export", int8=False, data=ExportData(None, x, y))
    return folder


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    """A fresh copy of the export, free to damage."""
    return Path(shutil.copytree(exported, tmp_path / "export"))


def verify_cmd(*args: str):  # noqa: ANN201
    from akd_edge.cli.verify_cmd import verify_cmd as command

    return CliRunner().invoke(command, list(args))


def text(result) -> str:  # noqa: ANN001
    return " ".join(result.output.split())


@pytest.fixture
def npz(exported: Path) -> str:
    return str(exported.parent / "data.npz")


def test_verify_records_the_checked_digests(folder: Path, npz: str) -> None:
    verify = verify_export(folder, data=npz, **FAST)
    recorded = json.loads((folder / "report.json").read_text())["files"]
    assert verify["files"]["model.onnx"]["sha256"] == recorded["model.onnx"]["sha256"]
    assert set(verify["files"]) == {"model.onnx", "model.ort"}


def test_swapped_model_is_refused(exported: Path, folder: Path, npz: str) -> None:
    """A valid ONNX model put in place of the exported one must not be verified under the export's name."""
    model = onnx.load(str(folder / "model.onnx"))
    model.doc_string = "another model"
    onnx.save(model, str(folder / "model.onnx"))
    report_before = (folder / "report.json").read_bytes()
    with pytest.raises(ModelFileError, match=r"model\.onnx does not match the SHA-256"):
        verify_export(folder, data=npz, **FAST)
    result = verify_cmd(str(folder), "--data", npz, "--transfer", "none", "--no-latency", "--n", "8")
    assert result.exit_code == 2 and "SHA-256" in text(result) and "Traceback" not in result.output
    assert (folder / "report.json").read_bytes() == report_before  # nothing recorded
    shutil.copy(exported / "model.onnx", folder / "model.onnx")
    (folder / "model.int8.onnx").write_bytes((folder / "model.onnx").read_bytes())  # a file the export never wrote
    with pytest.raises(ModelFileError, match="not listed"):
        verify_export(folder, data=npz, **FAST)


@pytest.mark.parametrize("eps", ["nan", "inf", "-inf", "0", "-0.1"])
def test_eps_must_be_finite_and_positive(folder: Path, npz: str, eps: str) -> None:
    result = verify_cmd(str(folder), "--data", npz, "--eps", eps, "--transfer", "none", "--no-latency")
    assert result.exit_code == 2, result.output
    assert "--eps" in result.output and "Traceback" not in result.output
    with pytest.raises(UsageError, match="finite number > 0"):
        verify_export(folder, data=npz, eps=float(eps), **FAST)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.float32("nan"), "NaN or infinite"),
        (np.float32("inf"), "NaN or infinite"),
        (np.float32(1.5), r"in \[0, 1\]"),
        (np.float32(-0.5), r"in \[0, 1\]"),
    ],
)
def test_non_finite_or_out_of_range_images_are_refused(
    folder: Path, tmp_path: Path, bad: np.float32, message: str
) -> None:
    """NaN images give no argmax the attack can change: they used to score 100% robust accuracy."""
    x = np.random.default_rng(0).random((8, *SHAPE), dtype=np.float32)
    x[3, 0, 2, 2] = bad
    np.savez(tmp_path / "bad.npz", images=x, labels=np.zeros(8, dtype=np.int64))
    with pytest.raises(DataError, match=message):
        verify_export(folder, data=str(tmp_path / "bad.npz"), **FAST)
    result = verify_cmd(str(folder), "--data", str(tmp_path / "bad.npz"), "--transfer", "none", "--no-latency")
    assert result.exit_code == 2 and "bad.npz" in text(result)


def test_bad_npz_files_give_one_line_errors(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "text.npz").write_text("not a zip at all")
    np.save(tmp_path / "array.npy", np.zeros(3))
    shutil.copy(tmp_path / "array.npy", tmp_path / "npy.npz")
    np.savez(tmp_path / "ints.npz", images=np.zeros((4, *SHAPE), dtype=np.int64), labels=np.zeros(4, dtype=np.int64))
    np.savez(tmp_path / "flabels.npz", images=np.zeros((4, *SHAPE), dtype=np.uint8), labels=np.full(4, 0.5))
    np.savez(tmp_path / "keys.npz", x=np.zeros(3))
    for name, message in [
        ("text.npz", "not an .npz archive"),
        ("npy.npz", "not an .npz archive"),
        ("ints.npz", "uint8 .* or float"),
        ("flabels.npz", "labels must be integers"),
        ("keys.npz", "cannot read"),
    ]:
        with pytest.raises(DataError, match=message):
            verify_export(folder, data=str(tmp_path / name), **FAST)
        result = verify_cmd(str(folder), "--data", str(tmp_path / name), "--transfer", "none", "--no-latency")
        assert result.exit_code == 2 and name in text(result) and "Traceback" not in result.output, name


def test_report_that_is_not_an_export_report_is_refused(folder: Path, npz: str) -> None:
    for content, message in [
        ("[1, 2]", "expected an object"),
        ("{not json", "cannot read"),
        (json.dumps({"format": "something-else"}), "not an akd-edge export report"),
    ]:
        (folder / "report.json").write_text(content)
        result = verify_cmd(str(folder), "--data", npz, "--transfer", "none", "--no-latency")
        assert result.exit_code == 2 and message in text(result) and "Traceback" not in result.output, content


def test_names_from_the_report_are_names_not_paths(folder: Path, tmp_path: Path, npz: str) -> None:
    report = json.loads((folder / "report.json").read_text())
    outside = tmp_path / "outside.npz"
    shutil.copy(npz, outside)
    # a dataset name pointing at a file elsewhere: never read as a file
    hostile = dict(report, data={"name": str(outside), "data_dir": ""})
    (folder / "report.json").write_text(json.dumps(hostile))
    model = onnx.load(str(folder / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "dataset":
            prop.value = ""
    onnx.save(model, str(folder / "model.onnx"))
    hostile["files"]["model.onnx"]["sha256"] = _sha(folder / "model.onnx")
    (folder / "report.json").write_text(json.dumps(hostile))
    with pytest.raises(UsageError, match="not a plain name"):
        verify_export(folder, **FAST)
    hostile["files"]["../../etc/passwd"] = {"bytes": 1, "sha256": "0" * 64}
    (folder / "report.json").write_text(json.dumps(hostile))
    with pytest.raises(UsageError, match="not a plain name"):
        verify_export(folder, data=npz, **FAST)


def _sha(path: Path) -> str:
    from akd_edge.core.files import sha256_file

    return sha256_file(path)
