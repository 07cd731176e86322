"""PNG plots of an evaluation (matplotlib, optional): robust accuracy against epsilon, reliability
diagrams, and the training-dynamics comparison of two runs.

matplotlib is imported inside each function with the non-interactive Agg backend; callers check
:func:`matplotlib_available` first and report :data:`MISSING` when it is not installed.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MISSING = "matplotlib is not installed, so no PNG plots were written; install it with `pip install 'akd-edge[plots]'`"


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    from akd_edge.files import write_atomic

    fig.tight_layout()
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        _pyplot().close(fig)
    return Path(path)


def plot_eps_curve(curves: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """Robust accuracy against epsilon, one line per model/attack: ``{label: [{"eps", "acc"}, ...]}``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in curves.items():
        ax.plot([p["eps"] for p in points], [100 * p["acc"] for p in points], marker="o", label=label)
    ax.set_xlabel("epsilon")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or "robust accuracy against epsilon")
    return _save(fig, Path(path))


def plot_reliability(diagrams: dict[str, dict[str, Any]], path: str | Path) -> Path:
    """Reliability diagrams side by side: ``{label: calibration result}`` (bins from CalibrationMeter)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(diagrams), figsize=(4.2 * len(diagrams), 4), squeeze=False)
    for ax, (label, result) in zip(axes[0], diagrams.items(), strict=True):
        bins = result["bins"]
        edges = bins["edges"]
        width = edges[1] - edges[0]
        lefts = edges[:-1]
        accuracy = [a if a is not None else 0.0 for a in bins["accuracy"]]
        confidence = [c if c is not None else 0.0 for c in bins["confidence"]]
        ax.bar(lefts, accuracy, width=width, align="edge", edgecolor="black", alpha=0.8, label="accuracy")
        gap_bottom = [min(a, c) for a, c in zip(accuracy, confidence, strict=True)]
        gap = [abs(a - c) for a, c in zip(accuracy, confidence, strict=True)]
        ax.bar(
            lefts,
            gap,
            bottom=gap_bottom,
            width=width,
            align="edge",
            fill=False,
            hatch="//",
            edgecolor="red",
            linewidth=0.5,
            label="gap to confidence",
        )
        ax.plot([0, 1], [0, 1], "k--", linewidth=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label}: ECE {100 * result['ece']:.1f}%")
        ax.legend(loc="upper left")
    return _save(fig, Path(path))


def plot_dynamics(comparison: dict[str, Any], path: str | Path) -> Path:
    """Share of samples learned for good by each epoch (clean, adv) and the set sizes, for one or two runs
    (``comparison`` as :func:`akd_edge.metrics.dynamics.compare` returns it, or ``{"names", "summaries"}``)."""
    plt = _pyplot()
    names = comparison["names"]
    summaries = comparison["summaries"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        for record, style in (("clean", "--"), ("adv", "-")):
            curve = summaries[name][record]["learned_for_good_by_epoch"]
            left.plot(range(1, len(curve) + 1), [100 * v for v in curve], style, marker=".", label=f"{name} {record}")
    from matplotlib.ticker import MaxNLocator

    left.xaxis.set_major_locator(MaxNLocator(integer=True))
    left.set_xlabel("epoch")
    left.set_ylabel("learned for good (% of training samples)")
    left.set_ylim(0, 100)
    left.grid(alpha=0.3)
    left.legend()
    labels = list(summaries[names[0]]["adv"]["sets"])
    positions = range(len(labels))
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        counts = [summaries[name]["adv"]["sets"][key]["count"] for key in labels]
        right.bar([p + (i - (len(names) - 1) / 2) * width for p in positions], counts, width=width, label=name)
    right.set_xticks(list(positions), labels, rotation=30, ha="right")
    right.set_ylabel("training samples (adversarial record)")
    right.legend()
    right.set_title("sample sets under the training attack")
    return _save(fig, Path(path))
