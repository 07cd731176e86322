"""Compress's module layout and output folder: imports go downward only; the output folder is marked and
never replaces anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import akd_edge
from akd_edge.compress.output import claim_out
from akd_edge.core.errors import UsageError
from akd_edge.core.files import MARK, in_use, mark

PACKAGE = Path(akd_edge.__file__).parent

# A low-level module may not import these (imports inside functions count).
UPWARD = (
    "akd_edge.cli",
    "akd_edge.compress",
    "akd_edge.train.loop",
    "akd_edge.evaluation.command",
    "akd_edge.teachers",
)
LOW_LEVEL = {
    "models/pruned.py": (*UPWARD, "akd_edge.train"),
    "models/checkpoint.py": (*UPWARD, "akd_edge.train"),
    "train/validate.py": UPWARD,
    "evaluation/engine.py": (*UPWARD, "akd_edge.train"),
    "metrics/robust.py": (*UPWARD, "akd_edge.train", "akd_edge.evaluation"),
    "attacks/suite.py": (*UPWARD, "akd_edge.train", "akd_edge.evaluation", "akd_edge.metrics"),
    "compress/prune.py": ("akd_edge.cli", "akd_edge.compress.command", "akd_edge.train.loop", "akd_edge.teachers"),
    "compress/measure.py": ("akd_edge.cli", "akd_edge.compress.command", "akd_edge.train.loop", "akd_edge.teachers"),
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("relative", sorted(LOW_LEVEL))
def test_low_level_modules_import_nothing_above_them(relative: str) -> None:
    upward = [
        name
        for name in imported_modules(PACKAGE / relative)
        if any(name == bad or name.startswith(f"{bad}.") for bad in LOW_LEVEL[relative])
    ]
    assert not upward, f"{relative} imports {upward}"


def _take(out: Path) -> Path:
    path, lock = claim_out(out, None, "src")
    lock.release()
    return path


def test_out_dir_takes_new_empty_or_mark_only_folders(tmp_path: Path) -> None:
    assert _take(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    assert _take(tmp_path / "empty") == tmp_path / "empty"
    mark(tmp_path / "stopped", "compress")  # a compress run that stopped before writing anything
    assert _take(tmp_path / "stopped") == tmp_path / "stopped"


def test_out_dir_is_locked_while_compress_runs(tmp_path: Path) -> None:
    path, lock = claim_out(tmp_path / "out", None, "src")
    try:
        assert in_use(path)
        with pytest.raises(UsageError, match="in use"):
            claim_out(path, None, "src")
    finally:
        lock.release()
    assert not in_use(path)


@pytest.mark.parametrize(
    ("kind", "message"),
    [("compress", "earlier compress output"), ("run", "akd-edge run folder"), (None, "not an empty folder")],
)
def test_out_dir_refuses_folders_with_contents(tmp_path: Path, kind: str | None, message: str) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    if kind is not None:
        mark(folder, kind)
    with pytest.raises(UsageError, match=message):
        claim_out(folder, None, "src")
    assert (folder / "report.json").read_text() == "{}"
    assert (folder / MARK).exists() == (kind is not None)


def test_out_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        claim_out(tmp_path / "f", None, "src")
