"""Export never deletes what it does not own: names from checkpoints, --out, orphans, failed exports, bad models."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from akd_edge.core import files
from akd_edge.core.errors import CheckpointError, UsageError
from akd_edge.export import ExportData, export_checkpoint, run_name
from akd_edge.export import folder as export_folder
from akd_edge.models import create_model
from akd_edge.models.checkpoint import save_atomic

SHAPE = (1, 12, 12)


def save_checkpoint(path: Path, run: str | None = None, nan: bool = False) -> Path:
    torch.manual_seed(0)
    model = create_model("cnn-student", num_classes=4, input_shape=SHAPE, mean=[0.5], std=[0.25])
    state = model.state_dict()
    if nan:
        first = next(k for k in state if k.endswith("weight"))
        state[first] = torch.full_like(state[first], float("nan"))
    ckpt = {
        "format": "akd-edge/1",
        "model": state,
        "arch": {
            "name": "cnn-student",
            "kwargs": {},
            "num_classes": 4,
            "input_shape": list(SHAPE),
            "mean": [0.5],
            "std": [0.25],
        },
        "data": {"name": "synthetic", "class_names": ["a", "b", "c", "d"], "data_dir": "n=64,test=32,shape=1x12x12"},
        "threat": {"norm": "linf", "eps": 0.1},
        "role": "student",
        "epoch": 1,
        "val": {},
    }
    if run is not None:
        ckpt["recipe"] = {"run": {"name": run}}
    return save_atomic(ckpt, path)


def images(n: int = 16) -> ExportData:
    x = np.random.default_rng(0).integers(0, 256, (n, *SHAPE), dtype=np.uint8)
    return ExportData(None, x, np.zeros(n, dtype=np.int64))


def invoke(*args: str):  # noqa: ANN201
    from akd_edge.cli.export_cmd import export_cmd

    return CliRunner().invoke(export_cmd, list(args))


def text(result) -> str:  # noqa: ANN001
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("hostile", ["../victim", "/tmp/victim-abs", "..", ".hidden", "a/b", "x" * 300])
def test_run_name_from_checkpoint_never_becomes_a_path(
    hostile: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    ckpt = save_checkpoint(tmp_path / "evil.pt", run=hostile)
    result = invoke(str(ckpt), "--no-int8")
    assert result.exit_code == 2, result.output
    assert "run.name" in result.output and "Traceback" not in result.output
    assert (victim / "precious.txt").read_text() == "keep me"
    assert not (work / "export").exists()
    with pytest.raises(UsageError, match="not a plain name|too long"):
        run_name({"recipe": {"run": {"name": hostile}}, "path": "x.pt"})


def test_default_name_from_the_path_is_checked_too() -> None:
    assert run_name({"path": "runs/my-run/best.pt"}) == "my-run"
    with pytest.raises(UsageError, match="give --out"):
        run_name({"path": "../best.pt"})  # the parent's name is '..'


@pytest.mark.parametrize("kind", ["user", "run", "symlink", "file"])
def test_out_that_is_not_an_export_is_refused_and_kept(kind: str, tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "out"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    if kind == "user":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        (out / "report.json").write_text(json.dumps({"format": "akd-edge-export/1"}))  # plus a foreign file
    elif kind == "run":
        out.mkdir()
        (out / "best.pt").write_bytes(b"weights")
        files.mark(out, "run")
    elif kind == "symlink":
        out.symlink_to(target)
    else:
        out.write_text("a file")
    before = tree(tmp_path)
    result = invoke(str(ckpt), "--out", str(out), "--no-int8")
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "Traceback" not in result.output
    if kind == "run":
        assert "akd-edge run folder" in text(result)
    assert tree(tmp_path) == before  # nothing deleted, nothing added


def test_replaceable_recognises_exports_only(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "report.json").write_text(json.dumps({"format": "akd-edge-export/1"}))
    (legacy / "model.onnx").write_bytes(b"onnx")
    (legacy / "MODEL_CARD.md").write_text("card")
    assert export_folder.replaceable(legacy) == "legacy export"
    not_object = tmp_path / "list"
    not_object.mkdir()
    (not_object / "report.json").write_text("[1, 2]")
    assert export_folder.replaceable(not_object) is None
    other_format = tmp_path / "eval"
    other_format.mkdir()
    (other_format / "report.json").write_text(json.dumps({"format": "akd-edge-eval/1"}))
    assert export_folder.replaceable(other_format) is None
    marked = tmp_path / "marked"
    marked.mkdir()
    files.mark(marked, "export")
    (marked / "model.onnx").write_bytes(b"onnx")
    assert export_folder.replaceable(marked) == "export"
    (marked / "anything.txt").write_text("x")  # the user's file in an export: never deleted by a re-export
    assert export_folder.replaceable(marked) is None
    files.mark(marked, "export", files=["model.onnx", "anything.txt"])  # unless the export wrote it
    assert export_folder.replaceable(marked) == "export"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_folder.replaceable(empty) == "empty"
    assert export_folder.replaceable(tmp_path / "missing") == "missing"


def test_export_cleans_its_orphans_marks_and_uses_usual_modes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    parent = tmp_path / "export"
    out = parent / "run"
    parent.mkdir()
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"format": "akd-edge-export/1"}))  # exported before the mark
    (out / "model.onnx").write_bytes(b"old")
    orphans = [parent / ".run.partial-abcd_123", parent / ".run.old-4242"]
    strangers = [parent / ".run.partial-x", parent / ".other.partial-abcd_123", parent / "run.partial-abcd_123"]
    strangers.append(parent / ".run.old-99")  # named like a moved-aside export, but not an export: kept
    for path in orphans + strangers:
        path.mkdir()
        (path / "model.onnx").write_bytes(b"half")
    files.mark(parent / ".run.old-4242", "export")  # an earlier export moved aside by a killed export
    with caplog.at_level(logging.INFO, logger="akd_edge.export.folder"):
        folder, _ = export_checkpoint(ckpt, out, int8=False, data=images())
    assert folder == out and files.marked_kind(out) == "export"
    assert (out / "model.onnx").read_bytes() != b"old"
    assert "replacing the earlier export" in caplog.text
    assert not any(path.exists() for path in orphans)
    assert all((path / "model.onnx").is_file() for path in strangers)
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".run")) == [".run.old-99", ".run.partial-x"]
    assert not (out / files.LOCK).exists()
    assert stat.S_IMODE(out.stat().st_mode) == files.dir_mode()
    for name in ("report.json", "MODEL_CARD.md", "model.onnx", "model.ort", files.MARK):
        assert stat.S_IMODE((out / name).stat().st_mode) == files.file_mode(), name


def test_live_export_of_the_same_folder_is_never_disturbed(tmp_path: Path) -> None:
    """Another export holds the folder's lock: a second one fails at once and leaves its partial folder alone."""
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    out = tmp_path / "run"
    live_partial = tmp_path / ".run.partial-live0001"
    live_partial.mkdir()
    with files.FolderLock(out, "export folder"):
        with pytest.raises(files.FolderInUse, match="in use"):
            export_checkpoint(ckpt, out, int8=False, data=images())
        assert live_partial.is_dir()


def test_failed_attempt_never_replaces_a_user_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    user = tmp_path / "run.failed"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    attempt = tmp_path / ".run.partial-abcdefgh"
    attempt.mkdir()
    (attempt / "model.onnx").write_bytes(b"attempt")
    kept = export_folder.keep_failed(attempt, out)
    assert kept != user and (kept / "model.onnx").read_bytes() == b"attempt"
    assert (user / "notes.txt").read_text() == "mine"


def test_unwritable_out_fails_before_any_work(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "tiny.pt")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = invoke(str(ckpt), "--out", str(blocker / "sub"), "--no-int8")
    assert result.exit_code == 2 and "--out" in result.output and "Traceback" not in result.output
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        result = invoke(str(ckpt), "--out", str(locked / "out"), "--no-int8")
        assert result.exit_code == 2 and "cannot write" in text(result)


def test_nan_model_is_refused_up_front(tmp_path: Path) -> None:
    ckpt = save_checkpoint(tmp_path / "nan.pt", nan=True)
    result = invoke(str(ckpt), "--out", str(tmp_path / "out"), "--calib", "8")
    assert result.exit_code == 2, result.output
    assert "NaN or infinite weights" in text(result) and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    with pytest.raises(CheckpointError, match="NaN"):
        export_checkpoint(ckpt, tmp_path / "out", int8=False, data=images())


@pytest.mark.parametrize("out", [".", "..", "a/..", "/"])
def test_out_must_name_a_folder_of_its_own(out: str) -> None:
    with pytest.raises(UsageError, match="does not name a folder"):
        export_folder.check_out(Path(out))
