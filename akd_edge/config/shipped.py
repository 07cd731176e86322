"""The recipes shipped inside the package, found by name, and what each reached where it was measured
(``recipes/results/NAME.json``, written by ``benchmarks/run_recipe.py``)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from akd_edge.core.errors import ConfigError

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
"""The shipped recipes, inside the package (so a wheel has them); the repository's ``recipes/`` links here."""


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipes by name (file stem)."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.toml"))}


def resolve_recipe_path(source: str | Path) -> Path:
    """A path as given, or the name of a shipped recipe (``fmnist-quickstart``)."""
    path = Path(source)
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = path.stem if path.suffix == ".toml" else str(source)
    if name in shipped and path.parent in (Path("."), Path("recipes")):
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"recipe {source} not found.{hint} `akd-edge recipes` lists the shipped recipes.")


def recipe_results(name: str) -> dict[str, Any] | None:
    """What a shipped recipe reached, as measured by ``benchmarks/run_recipe.py`` (None if never run)."""
    import json

    path = RECIPES_DIR / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def measured_where(result: dict[str, Any]) -> str:
    """Where a recipe's results were measured, short: ``x86_64 CPU, 2 torch threads`` or ``trained on one
    NVIDIA H200, tested on x86_64 CPU``, from the results file's ``machine`` text."""
    trained, _, tested = str(result.get("machine", "")).partition(", tested on ")
    if trained.startswith("trained on "):
        where = f"trained on {_short_machine(trained.removeprefix('trained on '))}"
        return f"{where}, tested on {_short_machine(tested)}" if tested else where
    return _short_machine(trained)


def _short_machine(text: str) -> str:
    """``x86_64 , 2 torch threads, torch 2.13.0+cpu, device cpu`` -> ``x86_64 CPU, 2 torch threads``;
    ``one NVIDIA H200 (torch ...)`` -> ``one NVIDIA H200``."""
    parts = [part.strip() for part in text.split("(")[0].split(",") if part.strip()]
    if not parts:
        return "an unrecorded machine"
    cpu = "device cpu" in text
    head = f"{parts[0]} CPU" if cpu else parts[0]
    threads = [part.replace("1 torch threads", "1 torch thread") for part in parts[1:] if part.endswith("threads")]
    return ", ".join([head, *threads[:1]])


def measured_summary(result: dict[str, Any]) -> str:
    """One line of what a recipe reached: ``83.9% / 71.1%, 16 min (x86_64 CPU, 2 torch threads)``."""
    test = result["test"]
    return (
        f"{test['clean_acc']:.1%} / {test['robust_acc']:.1%}, {result['wall_time_s'] / 60:.0f} min "
        f"({measured_where(result)})"
    )
