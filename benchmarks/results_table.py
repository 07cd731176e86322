"""Print the markdown table of what the shipped recipes reached, from ``recipes/results/*.json``.

    python benchmarks/results_table.py

The JSON files are written by ``benchmarks/run_recipe.py``; this only formats them for the README, each
test accuracy with its 95% Wilson interval (recomputed from the accuracy and n where a file predates it).
"""

from __future__ import annotations

import json

from akd_edge.config import RECIPES_DIR, measured_where
from akd_edge.core.interval import format_interval, interval_of


def _acc(test: dict, key: str) -> str:
    """``83.2% [81.5, 84.8]``: a test accuracy with its 95% interval."""
    ci = test.get(f"{key}_ci95") or interval_of(test[f"{key}_acc"], test["n"])
    return f"{test[f'{key}_acc']:.1%} {format_interval(ci)}"


def render() -> str:
    """The table and, under it, each results file's note, as markdown."""
    lines = [
        "| recipe | params | test clean | test PGD-20 (Linf) | best epoch | wall time | machine | overrides |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    notes = []
    for path in sorted((RECIPES_DIR / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("note"):
            notes.append(f"- {r['recipe']}: {r['note']}")
        test, attack = r["test"], r["test"]["attack"]
        lines.append(
            f"| {r['recipe']} | {r['params']:,} | {_acc(test, 'clean')} | {_acc(test, 'robust')} "
            f"(eps {attack['eps']:g}, n={test['n']}) | {r['best_epoch']}/{r['epochs']} | "
            f"{r['wall_time_s'] / 60:.1f} min | {measured_where(r)} | {', '.join(r['overrides']) or '-'} |"
        )
    return "\n".join([*lines, "", *notes])


def main() -> None:
    print(render())


if __name__ == "__main__":
    main()
