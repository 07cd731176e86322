#!/usr/bin/env python
"""Benchmark: the robust generalisation gap of trained runs (training-split against test-split accuracy).

Distillation's soft labels act as a regulariser: they can only win back robustness the student loses between
the images it trained on and new ones. This measures that room. For each run directory, clean and PGD-20
accuracy (the run's threat model, one restart) on the first ``--n`` images of the run's own training split
(the images it was trained on, without augmentation) and on the first ``--n`` test images, with the gap.

    python benchmarks/robust_gap.py runs/studies/fmnist-budget/at/seed* runs/studies/fmnist-budget/akd-wide-a09-t2/seed*
    python benchmarks/robust_gap.py --n 1000 --out benchmarks/results/robust_gap.json RUN...

Prints a markdown table (one row per run, then the mean per variant directory) and writes every figure with
its settings and n to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

import akd_edge
from akd_edge.train.accel import machine_summary


def measure(run: Path, n: int, steps: int, threads: int) -> dict:
    """Clean and PGD accuracy of ``run``'s best checkpoint on its training split and on the test split."""
    splits = akd_edge.load_data(run / "recipe.toml")
    train = splits.train.subset(np.arange(min(n, len(splits.train))))
    test = splits.test.subset(np.arange(min(n, len(splits.test))))
    figures = {}
    for name, data in (("train", train), ("test", test)):
        results = akd_edge.evaluate(run, data, n=n, steps=steps, threads=threads, checks=False, calibration=False)
        pgd = results["attacks"]["pgd"]
        figures[name] = {"clean": results["clean"]["acc"], "pgd": pgd["acc"], "n": results["clean"]["n"]}
    figures["attack"] = pgd.get("settings", {})  # the same settings for both splits
    figures["gap_clean"] = figures["train"]["clean"] - figures["test"]["clean"]
    figures["gap_pgd"] = figures["train"]["pgd"] - figures["test"]["pgd"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (their best checkpoint)")
    parser.add_argument("--n", type=int, default=2000, help="images of each split")
    parser.add_argument("--steps", type=int, default=20, help="PGD steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/robust_gap.json")
    args = parser.parse_args()
    rows = {str(run): measure(run, args.n, args.steps, args.threads) for run in args.runs}

    def pct(value: float) -> str:
        return f"{100 * value:.1f}"

    print(f"PGD-{args.steps}, one restart, the run's threat model; first {args.n} images of each split\n")
    print("| run | train clean % | train PGD % | test clean % | test PGD % | gap clean | gap PGD |")
    print("|---|---|---|---|---|---|---|")
    for run, f in rows.items():
        print(
            f"| {run} | {pct(f['train']['clean'])} | {pct(f['train']['pgd'])} | {pct(f['test']['clean'])} "
            f"| {pct(f['test']['pgd'])} | {pct(f['gap_clean'])} | {pct(f['gap_pgd'])} |"
        )
    variants: dict[str, list[dict]] = {}
    for run, f in rows.items():
        variants.setdefault(str(Path(run).parent), []).append(f)
    print("\n| variant | runs | gap clean (mean) | gap PGD (mean) |")
    print("|---|---|---|---|")
    for variant, figures in variants.items():
        clean = statistics.mean(f["gap_clean"] for f in figures)
        robust = statistics.mean(f["gap_pgd"] for f in figures)
        print(f"| {variant} | {len(figures)} | {pct(clean)} | {pct(robust)} |")
    out = {"n": args.n, "steps": args.steps, "runs": rows, "machine": machine_summary()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
