"""Run a shipped recipe end to end and publish what it reaches as data: ``recipes/results/NAME.json``.

    python benchmarks/run_recipe.py fmnist-quickstart [--n 2000] [--out runs/bench-NAME] [--set KEY=VALUE ...]

Trains the recipe, then measures its early-stopped checkpoint on the first N test images (default 2,000,
at least 1,000: fewer leave the figures too noisy), clean and under PGD-20 at the recipe's threat model,
and writes the figures, each with its 95% Wilson interval, with the wall time, the attack's settings, the
machine (CPU model and flags) and its load average (a shared machine slows the wall time, not the accuracy). The recipe's ``[expected]`` section points at that file; nothing there is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from akd_edge.config import RECIPES_DIR, Recipe, load_recipe, resolve_recipe_path, to_dict
from akd_edge.core.env import load_average, resolve_device, torch_threads
from akd_edge.core.interval import REPORTED_N, interval_of
from akd_edge.core.version import __version__
from akd_edge.data import load_test_split
from akd_edge.models.checkpoint import load_model
from akd_edge.train.accel import machine_summary
from akd_edge.train.loop import train_run
from akd_edge.train.validate import validate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe")
    parser.add_argument(
        "--n", type=int, default=2 * REPORTED_N, help="test images attacked (0 = all; a smaller split whole)"
    )
    parser.add_argument("--out", type=Path, help="run directory (default runs/bench-NAME)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--resume", action="store_true", help="continue a killed benchmark run")
    parser.add_argument("--note", default="", help="context to publish with the figures (e.g. machine load)")
    parser.add_argument(
        "--measured-run", type=Path, help="measure this finished run of the recipe instead of training again"
    )
    parser.add_argument(
        "--trained-on", default="", help="with --measured-run: the machine that trained it (e.g. 'one NVIDIA H200')"
    )
    return parser.parse_args(argv)


def measure_test(run_dir: Path, recipe: Recipe, n: int) -> dict[str, Any]:
    """The run's early-stopped checkpoint on the first ``n`` test images, clean and under PGD-20 at the
    recipe's threat model, each accuracy with its 95% Wilson interval."""
    torch.manual_seed(0)
    model, _ = load_model(run_dir, "best")
    threat = replace(recipe.eval.attack, steps=20, step_size=0.0)
    test, _ = load_test_split(recipe.data.name, recipe.data.data_dir, n=n)
    metrics = validate(model, test, threat, batch_size=500, device=resolve_device(recipe.run.device))
    return {
        "n": metrics["n"],
        "clean_acc": metrics["clean_acc"],
        "clean_ci95": interval_of(metrics["clean_acc"], metrics["n"]),
        "robust_acc": metrics["robust_acc"],
        "robust_ci95": interval_of(metrics["robust_acc"], metrics["n"]),
        "attack": threat.settings(),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    path = resolve_recipe_path(args.recipe)
    recipe = load_recipe(path, args.overrides)
    machine, load_before = machine_summary(), load_average()
    if args.measured_run:
        run_dir = args.measured_run
        summary = json.loads((run_dir / "summary.json").read_text())
        wall = summary["train_time_s"] + summary["val_time_s"]  # training and validation, data loading aside
    else:
        run_dir = args.out or Path("runs") / f"bench-{path.stem}"
        start = time.perf_counter()
        with torch_threads(recipe.run.threads):
            summary = train_run(recipe, run_dir, resume=args.resume)
        wall = time.perf_counter() - start

    trained_on = f"trained on {args.trained_on}, tested on " if args.measured_run and args.trained_on else ""
    load_after_training = load_average()
    result = {
        "recipe": path.stem,
        "overrides": args.overrides,
        "akd_edge_version": __version__,
        "machine": trained_on
        + f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, device {resolve_device(recipe.run.device)}",
        "wall_time_s": round(wall, 1),
        "train_time_s": round(summary["train_time_s"], 1),
        "images_per_s": round(summary["images_per_s"], 1),
        "params": summary["params"],
        "macs": summary["macs"],
        "best_epoch": summary["best"]["epoch"],
        "epochs": summary["epochs"],
        "val_best": summary["best"],
        "test": measure_test(run_dir, recipe, args.n),
        "teachers": [to_dict(t) for t in recipe.teachers],
        "per_epoch_images_per_s": [
            round(json.loads(line)["images_per_s"], 1)
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line and json.loads(line)["event"] == "epoch"
        ],
        "note": args.note,
        "cpu": {key: machine[key] for key in ("cpu", "cpu_flags")},
        "load_average": {"start": load_before, "end_of_training": load_after_training},
    }
    out = RECIPES_DIR / "results" / f"{path.stem}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
