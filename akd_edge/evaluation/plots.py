"""PNG plots of an evaluation (matplotlib, optional): robust accuracy against epsilon, reliability
diagrams, the training-dynamics comparison of two runs, and the Pareto front of robust accuracy against
size and latency (``akd-edge report``).

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


def _save(fig: Any, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> Path:
    """Lay out (inside ``rect``, leaving the rest for a figure legend) and write the figure atomically."""
    from akd_edge.core.files import write_atomic

    fig.tight_layout(rect=rect)
    try:
        write_atomic(path, lambda fh: fig.savefig(fh, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        _pyplot().close(fig)
    return Path(path)


def _error_bars(points: Sequence[dict[str, Any]], key: str = "acc", ci: str = "ci95") -> list[list[float]] | None:
    """``yerr`` (percent below, above) of each point's 95% interval, or None when a point has none."""
    below, above = [], []
    for point in points:
        low, high = (point.get(ci) or [None, None])[:2]
        if low is None or high is None:
            return None
        value = 100 * point[key]
        below.append(max(value - 100 * low, 0.0))
        above.append(max(100 * high - value, 0.0))
    return [below, above]


def plot_eps_curve(
    curves: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "", threat_eps: Sequence[float] = ()
) -> Path:
    """Robust accuracy against epsilon, one line per model/attack: ``{label: [{"eps", "acc", "ci95"}, ...]}``,
    each point with its 95% interval as an error bar, and a dotted line at each threat model's epsilon."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, points in curves.items():
        xs, ys = [p["eps"] for p in points], [100 * p["acc"] for p in points]
        ax.errorbar(xs, ys, yerr=_error_bars(points), marker="o", capsize=3, label=label)
    for eps in sorted(set(threat_eps)):
        ax.axvline(eps, color="black", linestyle=":", linewidth=1, label=f"threat model eps {eps:g}")
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
    (``comparison`` as :func:`akd_edge.metrics.forgetting.compare` returns it, or ``{"names", "summaries"}``)."""
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


PARETO_AXES = (
    ("bytes", "file size (KiB, log scale)", 1 / 1024),
    ("p50_ms", "p50 latency, batch 1 (ms, log scale)", 1.0),
)
"""The two costs of :func:`plot_pareto`: the point's key, the axis label, the factor to the axis unit."""
PARETO_MARKERS = {"student": "o", "pruned student": "^", "teacher": "*"}
PARETO_COLOURS = {"fp32": "tab:blue", "int8": "tab:orange"}


def _kind(point: dict[str, Any]) -> str:
    return "teacher" if point.get("role") == "teacher" else "pruned student" if point.get("pruned") else "student"


def _pareto_panel(ax: Any, points: Sequence[dict[str, Any]], key: str, label: str, scale: float) -> None:
    """One panel: every point (marker by role, colour by precision, ringed on the front), labelled, and the
    front as a dashed step line."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    shown = sorted((p for p in points if p.get(key) is not None), key=lambda p: p[key])
    for rank, point in enumerate(shown):
        kind = _kind(point)
        x, y = point[key] * scale, 100 * point["robust"]
        if point.get(f"front_{key}"):
            ax.scatter(x, y, s=260, facecolor="none", edgecolor="black", linewidth=1.2, zorder=2)
        colour = PARETO_COLOURS.get(point.get("precision"), "tab:gray")
        size = 180 if kind == "teacher" else 60
        ax.scatter(x, y, marker=PARETO_MARKERS[kind], s=size, color=colour, edgecolor="black", linewidth=0.5, zorder=3)
        yerr = _error_bars([point], key="robust", ci="robust_ci95")
        if yerr is not None:
            ax.errorbar([x], [y], yerr=yerr, fmt="none", ecolor=colour, capsize=3, linewidth=1, zorder=2)
        below = rank % 2 == 1  # neighbours in x alternate above and below, so their labels do not overlap
        ax.annotate(point["label"], (x, y), textcoords="offset points", xytext=(6, -12 if below else 6), fontsize=7)
    front = sorted((p for p in shown if p.get(f"front_{key}")), key=lambda p: p[key])
    if len(front) > 1:
        xs, ys = [p[key] * scale for p in front], [100 * p["robust"] for p in front]
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, zorder=1)
    if shown:
        ax.set_xscale("log")
        ax.margins(x=0.15)
        ax.set_ylim(*robust_axis(shown))
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)
    ax.set_ylabel("verified robust accuracy (%)")
    ax.grid(alpha=0.3, which="both")


PARETO_MIN_SPAN = 10.0
"""The robust-accuracy axis spans at least this many points, so that differences far inside the 95%
intervals (about +-3 points on 1,000 images) do not fill the plot's height."""


def _robust_bounds(point: dict[str, Any]) -> tuple[float, float]:
    """A point's 95% interval of robust accuracy in percent, or the point itself when it has none."""
    low, high = (point.get("robust_ci95") or [None, None])[:2]
    value = 100 * point["robust"]
    return (value, value) if low is None or high is None else (100 * low, 100 * high)


def robust_axis(points: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Limits (percent) of the robust-accuracy axis: every point's 95% interval, at least
    :data:`PARETO_MIN_SPAN` wide plus a point of margin each side, within [0, 100]."""
    bounds = [_robust_bounds(point) for point in points]
    low, high = min(b[0] for b in bounds), max(b[1] for b in bounds)
    pad = max(PARETO_MIN_SPAN - (high - low), 0.0) / 2 + 1.0
    return max(low - pad, 0.0), min(high + pad, 100.0)


def _pareto_legend(fig: Any) -> None:
    from matplotlib.lines import Line2D

    def handle(marker: str, colour: str, text: str, **kw: Any) -> Any:
        return Line2D([], [], marker=marker, color=colour, linestyle="none", label=text, **{"markersize": 8, **kw})

    handles = [handle(m, "lightgray", kind, markeredgecolor="black") for kind, m in PARETO_MARKERS.items()]
    handles += [handle("s", c, precision) for precision, c in PARETO_COLOURS.items()]
    handles.append(handle("o", "none", "on the Pareto front", markeredgecolor="black", markersize=12))
    handles.append(Line2D([], [], color="black", linestyle="--", label="the front"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)


def plot_pareto(points: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Robust accuracy against file size and against p50 latency, the Pareto front of each marked.

    ``points``: ``{"label", "robust" (0-1), "robust_ci95" ([low, high] or None: drawn as an error bar), "bytes",
    "p50_ms" (either may be None), "precision", "role", "pruned", "front_bytes", "front_p50_ms"}``. Markers: circle student, triangle pruned student, star
    teacher; blue fp32, orange int8; a ring and the dashed step line mark the front.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, (key, label, scale) in zip(axes, PARETO_AXES, strict=True):
        _pareto_panel(ax, points, key, label, scale)
    fig.suptitle(title or "robust accuracy verified under onnxruntime, against size and latency")
    _pareto_legend(fig)
    return _save(fig, Path(path), rect=(0, 0.07, 1, 1))
