"""The folders are the layers: a module imports only from its own floor or the floors below it.

The floors, from the ground up, are the ones docs/ARCHITECTURE.md lists; imports inside functions count.
A new package gets a floor here before its first import, so that nothing quietly reaches upward.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import akd_edge

PACKAGE = Path(akd_edge.__file__).parent

FLOORS = {
    "core": 1,
    "config": 2,
    "models": 2,
    "data": 3,
    "methods": 3,
    "attacks": 3,
    "metrics": 4,
    "teachers": 4,
    "evaluation": 5,
    "train": 6,
    "compress": 7,
    "export": 8,
    "verify": 9,
    "report": 9,
    "api": 10,
    "run": 11,
    "__init__": 11,
    "cli": 12,
    "__main__": 13,
}
"""The floor of each top-level module or package of ``akd_edge`` (``__init__`` is the package itself)."""


def _part(module: str) -> str:
    """``akd_edge.export.card`` -> ``export``; ``akd_edge`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imported(path: Path) -> list[str]:
    """The ``akd_edge`` modules ``path`` imports (``from akd_edge import api`` counts as ``akd_edge.api``)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "akd_edge":
                names += [f"akd_edge.{alias.name}" for alias in node.names if alias.name != "__version__"]
            else:
                names.append(node.module)
    return [name for name in names if name == "akd_edge" or name.startswith("akd_edge.")]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_their_floor_and_below(path: Path) -> None:
    relative = path.relative_to(PACKAGE)
    own = relative.parts[0] if len(relative.parts) > 1 else relative.stem
    assert own in FLOORS, f"{relative}: give {own!r} a floor in FLOORS"
    upward = [name for name in imported(path) if FLOORS.get(_part(name), 0) > FLOORS[own]]
    assert not upward, f"{relative} (floor {FLOORS[own]}) imports {upward} from above"


def test_every_floor_names_a_module_that_exists() -> None:
    present = {p.stem for p in PACKAGE.glob("*.py")} | {p.parent.name for p in PACKAGE.glob("*/*.py")}
    assert set(FLOORS) == present
