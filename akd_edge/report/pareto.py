"""The Pareto front: the models no other model beats on both a cost (size, latency) and robust accuracy."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the ``(cost, value)`` points that are not dominated, in increasing cost.

    A point is dominated when another has a cost no higher and a value no lower, and is better on one of
    them. Equal points are all kept (neither beats the other).
    """
    front = []
    for i, (cost, value) in enumerate(points):
        dominated = any(
            c <= cost and v >= value and (c < cost or v > value) for j, (c, v) in enumerate(points) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))
