#!/usr/bin/env python
"""Robust accuracy against the number of labels: the fmnist-fewlabel study's table and plot.

    python benchmarks/fewlabel_curve.py [--results benchmarks/results/fmnist-fewlabel-aa.json] [--no-plot]

Reads a results file of ``benchmarks/method_study.py run fmnist-fewlabel`` and prints, for each label
budget N, AT on the N labelled images alone beside AKD with the other training images unlabelled (mean ±
standard deviation over the seeds present; clean and worst-case robust accuracy over the attacks run). The
plot (beside the results file, ``-curve.png``) draws robust accuracy against N, one line per method, with
the spread over seeds (or, for one seed, the 95% Wilson interval) as error bars.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from method_study import RESULTS_DIR, read_results, summarize  # noqa: E402  (a sibling script)

from akd_edge.core.interval import interval_of  # noqa: E402

LABELS = {1000: "1,000", 2000: "2,000", 5000: "5,000", 59000: "all (59,000)"}
SERIES = {
    "AT, labelled images only": {1000: "at-1k", 2000: "at-2k", 5000: "at-5k", 59000: "at-all"},
    "RST: AT on the shipped teacher's pseudo-labels + the rest unlabelled": {
        1000: "rst-rest-1k",
        2000: "rst-rest",
        5000: "rst-rest-5k",
        59000: "at-all",
    },
    "AKD + the rest unlabelled (shipped teacher)": {2000: "akd-rest", 59000: "akd-all"},
}
"""Each line of the plot: the study variant measured at each label budget (at "all" nothing is unlabelled, and
RST is AT on the labels)."""


def _cell(values: list[float], n: int) -> str:
    mean = 100 * statistics.fmean(values)
    if len(values) > 1:
        return f"{mean:.1f} ± {100 * statistics.stdev(values):.1f} ({len(values)} seeds)"
    low, high = interval_of(values[0], n)
    return f"{mean:.1f} [{100 * low:.1f}, {100 * high:.1f}] (1 seed)"


def curve(rows: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Per series and label budget, the study row measured there (budgets not yet measured are left out)."""
    by_variant = {row["variant"]: row for row in rows}
    return {
        name: {n: by_variant[v] for n, v in variants.items() if v in by_variant} for name, variants in SERIES.items()
    }


def markdown(lines: dict[str, dict[int, dict[str, Any]]], n_test: int, attacks: str) -> str:
    out = [
        f"Test clean / robust accuracy (%, worst case over {attacks}; {n_test:,} test images).",
        "",
        "| labels | " + " | ".join(lines) + " |",
        "|---|" + "---|" * len(lines),
    ]
    for n, label in LABELS.items():
        cells = []
        for points in lines.values():
            row = points.get(n)
            cells.append(
                f"{_cell(row['clean'], n_test)} / **{_cell(row['robust'], n_test)}**" if row else "not measured yet"
            )
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def plot(lines: dict[str, dict[int, dict[str, Any]]], path: Path, n_test: int, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in lines.items():
        budgets = sorted(points)
        if not budgets:
            continue
        means, errors = [], [[], []]
        for n in budgets:
            robust = points[n]["robust"]
            mean = statistics.fmean(robust)
            if len(robust) > 1:
                low = high = statistics.stdev(robust)
            else:
                lo, hi = interval_of(robust[0], n_test)
                low, high = mean - lo, hi - mean
            means.append(100 * mean)
            errors[0].append(100 * low)
            errors[1].append(100 * high)
        ax.errorbar(budgets, means, yerr=errors, marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    ax.set_xticks(list(LABELS), [label.split(" ")[0] for label in LABELS.values()])
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("robust test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def table(path: Path) -> tuple[str, dict[str, dict[int, dict[str, Any]]], int, str]:
    """The markdown table of a results file, with the curve, the test images and the attacks behind it."""
    results = read_results(path)
    rows, notes = summarize(results)
    if not rows:
        raise SystemExit(f"{path} holds no finished cell yet")
    done = [c for c in results["cells"].values() if c.get("status") == "done"]
    n_test = done[0]["eval"]["n"]
    attacks = ", ".join(done[0]["eval"]["attacks"])
    lines = curve(rows)
    text = markdown(lines, n_test, attacks) + "".join(f"- {note}\n" for note in notes)
    return text, lines, n_test, attacks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "fmnist-fewlabel-aa.json")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        raise SystemExit(f"no results at {args.results}: run benchmarks/method_study.py run fmnist-fewlabel first")
    text, lines, n_test, attacks = table(args.results)
    print(text, end="")
    if not args.no_plot:
        path = args.results.with_name(args.results.stem + "-curve.png")
        print(plot(lines, path, n_test, f"fmnist-fewlabel: robust accuracy ({attacks}) against labels"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
