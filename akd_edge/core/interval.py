"""The 95% interval printed next to every accuracy, and how many test images a reported figure defaults to.

An accuracy measured on n test images is a proportion with sampling noise: on 200 images a 95% interval
is about +-6 points wide, on 1,000 about +-3. akd-edge reports the **Wilson score interval** (Wilson, 1927),
which, unlike the textbook normal (Wald) interval, stays inside [0, 1] and keeps close to 95% coverage at
accuracies near 0 or 1 and at small n. Pure Python (no numpy, no torch): ``verify`` and the model card use it
on machines with only onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REPORTED_N = 1000
"""Default number of test images of every reported accuracy (eval, compress, verify, the benchmarks); a
test split smaller than this is used whole. On fewer images robust accuracy is too noisy to compare."""

Z95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95% interval."""


def wilson_interval(correct: int, n: int, z: float = Z95) -> list[float | None]:
    """Wilson score interval ``[low, high]`` of the proportion ``correct / n`` (``[None, None]`` when n = 0)."""
    if n <= 0:
        return [None, None]
    if not 0 <= correct <= n:
        raise ValueError(f"correct must be in [0, n], got {correct} of {n}")
    p = correct / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return [low, high]


def interval_of(acc: float | None, n: int | None) -> list[float | None]:
    """The Wilson interval of an accuracy given as a fraction of ``n`` images (a report that stored no counts)."""
    if acc is None or not n:
        return [None, None]
    return wilson_interval(round(acc * n), n)


def format_interval(ci: Sequence[float | None] | None, digits: int = 1) -> str:
    """``[65.6, 71.3]`` (percent) or ``-`` when there is no interval."""
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    return f"[{100 * ci[0]:.{digits}f}, {100 * ci[1]:.{digits}f}]"


def format_percent(value: float | None, digits: int = 2, *, unit: str = "%", missing: str = "-") -> str:
    """``68.50%``: a fraction as a percentage with ``digits`` decimals, or ``missing`` when there is none."""
    return missing if value is None else f"{100 * float(value):.{digits}f}{unit}"


def format_accuracy(acc: float | None, ci: Sequence[float | None] | None, digits: int = 2) -> str:
    """``68.50% [65.6, 71.3]``: an accuracy with its 95% interval (``-`` when there is no accuracy)."""
    if acc is None:
        return "-"
    interval = format_interval(ci)
    return f"{100 * acc:.{digits}f}%" + ("" if interval == "-" else f" {interval}")
