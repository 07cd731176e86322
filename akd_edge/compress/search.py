"""Find the pruning ratio that meets a parameter or MAC budget, by bisection on pruned deep copies."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from akd_edge.compress.prune import MAX_RATIO, prune_model, resolve_keep
from akd_edge.core.errors import UsageError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchResult:
    """The smallest searched ratio whose pruned model fits the budget, and what it achieves."""

    metric: str
    target: int
    ratio: float
    params: int
    macs: int
    trials: list[dict[str, float]] = field(default_factory=list)

    @property
    def achieved(self) -> int:
        return self.params if self.metric == "params" else self.macs

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "target": self.target,
            "ratio": self.ratio,
            "params": self.params,
            "macs": self.macs,
            "achieved_fraction_of_target": self.achieved / self.target,
            "trials": list(self.trials),
        }


def search_ratio(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    metric: str,
    target: int,
    round_to: int = 8,
    keep: Iterable[str] = (),
    max_ratio: float = MAX_RATIO,
    tolerance: float = 1 / 512,
    close_enough: float = 0.01,
) -> SearchResult:
    """Bisect the pruning ratio so the pruned ``model`` has at most ``target`` params (or MACs).

    Each trial prunes a deep copy, so ``model`` is untouched. Counts shrink monotonically with the ratio
    (local pruning, rounding down), so the result is the least pruning that fits the budget, found to
    within ``tolerance`` in ratio, or sooner once the count is within ``close_enough`` (a fraction) below
    the target. The number of iterative steps does not change the final counts.
    """
    from akd_edge.models import model_info

    if metric not in ("params", "macs"):
        raise UsageError(f"search metric must be params or macs, got {metric!r}")
    keep = tuple(keep)
    resolve_keep(model, keep)  # fail early on a bad name
    base = copy.deepcopy(model).cpu()
    full = model_info(base, input_shape)
    if target >= full[metric]:
        raise UsageError(
            f"target of {target:,} {metric} is not below the model's {full[metric]:,}: nothing to prune; "
            "give a smaller target or use --ratio"
        )
    trials: list[dict[str, float]] = []

    def counts_at(ratio: float) -> dict[str, int]:
        trial = copy.deepcopy(base)
        prune_model(trial, input_shape, ratio, round_to=round_to, keep=keep)
        info = model_info(trial, input_shape)
        trials.append({"ratio": ratio, **info})
        log.debug("search: ratio %.4f -> %s", ratio, info)
        return info

    low, high = 0.0, float(max_ratio)
    best = counts_at(high)
    if best[metric] > target:
        raise UsageError(
            f"target of {target:,} {metric} is unreachable: pruning {high:.0%} of the channels still leaves "
            f"{best[metric]:,} (the classifier and kept layers are not pruned; --round-to {round_to} keeps at "
            f"least {round_to} channels per layer). Give a larger target, a smaller --round-to or fewer --keep"
        )
    while high - low > tolerance:
        mid = (low + high) / 2
        info = counts_at(mid)
        if info[metric] <= target:
            high, best = mid, info
            if info[metric] >= (1 - close_enough) * target:
                break
        else:
            low = mid
    result = SearchResult(metric, int(target), high, best["params"], best["macs"], trials)
    if result.achieved < 0.95 * target:
        log.warning(
            "pruning ratio %.3f gives %s %s, %.1f%% below the target %s: channel steps of %d are coarse for "
            "this model; a smaller --round-to gets closer",
            high,
            f"{result.achieved:,}",
            metric,
            100 * (1 - result.achieved / target),
            f"{target:,}",
            round_to,
        )
    return result
