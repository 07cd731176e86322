"""Package a teacher run as the shipped teacher: its early-stopped weights beside its recipe and results.

    python benchmarks/run_recipe.py fmnist-teacher --measured-run runs/fmnist-teacher   # measure it first
    python benchmarks/ship_teacher.py runs/fmnist-teacher [--name fmnist-teacher]

Writes ``akd_edge/assets/NAME.pt`` (``best.pt`` without resume state), ``NAME.toml`` (the run's resolved
recipe) and ``NAME.json`` (the figures ``run_recipe.py`` measured, from ``recipes/results/NAME.json``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from akd_edge.config import RECIPES_DIR
from akd_edge.models.checkpoint import ASSETS, load_checkpoint, model_only, save_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--name", default="fmnist-teacher")
    args = parser.parse_args()
    results = RECIPES_DIR / "results" / f"{args.name}.json"
    if not results.is_file():
        raise SystemExit(f"{results} is missing: measure the run with benchmarks/run_recipe.py first")
    ASSETS.mkdir(parents=True, exist_ok=True)
    save_atomic(model_only(load_checkpoint(args.run_dir, "best")), ASSETS / f"{args.name}.pt")
    shutil.copyfile(args.run_dir / "recipe.toml", ASSETS / f"{args.name}.toml")
    shutil.copyfile(results, ASSETS / f"{args.name}.json")
    print(f"shipped {args.run_dir}/best.pt as {ASSETS / args.name}.pt")


if __name__ == "__main__":
    main()
