"""The training package's shape: the loop sits on top of its parts and nothing below calls back into it, and a
run resolves its teachers once, before the first step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from test_fewlabel import _few  # tests/ is on sys.path

import akd_edge
from akd_edge.config import load_recipe
from akd_edge.train import parts
from akd_edge.train.loop import Trainer

TRAIN = Path(akd_edge.__file__).parent / "train"
ABOVE = ("akd_edge.api", "akd_edge.cli", "akd_edge.compress", "akd_edge.export", "akd_edge.run", "akd_edge.verify")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(p.name for p in TRAIN.glob("*.py") if p.name != "loop.py"))
def test_the_loop_is_on_top_and_train_imports_nothing_above_it(module: str) -> None:
    imported = _imports(TRAIN / module)
    wrong = sorted(n for n in imported if n == "akd_edge.train.loop" or n.startswith(ABOVE))
    assert not wrong, f"train/{module} imports {wrong}"


def test_the_package_face_imports_nothing() -> None:
    """``import akd_edge.train`` stays free: torch loads with the submodule a caller asks for."""
    assert not _imports(TRAIN / "__init__.py")


def test_teachers_are_loaded_and_asked_for_labels_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"load_teachers": 0, "teacher_labels": 0}
    for name in calls:
        real = getattr(parts, name)

        def counted(*args: object, _real: object = real, _name: str = name, **kwargs: object) -> object:
            calls[_name] += 1
            return _real(*args, **kwargs)  # type: ignore[operator]

        monkeypatch.setattr(parts, name, counted)
    trainer = Trainer(load_recipe(_few(tmp_path, "akd", labeled_fraction=0.5)), tmp_path / "run", "student")
    assert calls == {"load_teachers": 1, "teacher_labels": 1}
    summary = trainer.run()
    assert calls == {"load_teachers": 1, "teacher_labels": 1}  # the loop steps what it was handed
    assert summary["images"] == {"labeled": 24, "unlabeled": 72}
    assert summary["teachers"] == trainer.ckpt_extra["teachers"] and len(summary["teachers"]) == 1
