"""Print the markdown table of what the shipped recipes reached, from ``recipes/results/*.json``.

    python benchmarks/results_table.py

The JSON files are written by ``benchmarks/run_recipe.py``; this only formats them for the README.
"""

from __future__ import annotations

import json

from akd_edge.config import RECIPES_DIR


def main() -> None:
    print("| recipe | params | test clean | test PGD-20 (Linf) | best epoch | wall time | machine | overrides |")
    print("|---|---:|---:|---:|---:|---:|---|---|")
    notes = []
    for path in sorted((RECIPES_DIR / "results").glob("*.json")):
        r = json.loads(path.read_text())
        if r.get("note"):
            notes.append(f"- {r['recipe']}: {r['note']}")
        test, attack = r["test"], r["test"]["attack"]
        print(
            f"| {r['recipe']} | {r['params']:,} | {test['clean_acc']:.1%} | {test['robust_acc']:.1%} "
            f"(eps {attack['eps']:g}, n={test['n']}) | {r['best_epoch']}/{r['epochs']} | "
            f"{r['wall_time_s'] / 60:.1f} min | {r['machine']} | {', '.join(r['overrides']) or '-'} |"
        )
    print()
    print("\n".join(notes))


if __name__ == "__main__":
    main()
