"""Calibration: expected calibration error, negative log-likelihood and Brier score, streamed in batches.

ECE follows Guo et al. (2017): the top-class confidences are put into ``n_bins`` equal-width bins of
(0, 1]; ECE is the sample-weighted mean of ``|accuracy(bin) - mean confidence(bin)|``. The Brier score
is the multi-class one, ``mean_i sum_k (p_ik - onehot_ik)^2`` (0 is perfect, 2 the worst). All three
only need per-bin sums and running totals, so :class:`CalibrationMeter` evaluates any number of samples
in flat memory and gives exactly the numbers the whole-array functions give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

N_BINS = 15


def _probs(scores: torch.Tensor | np.ndarray, from_logits: bool) -> torch.Tensor:
    scores = torch.as_tensor(scores).detach().double()
    return torch.softmax(scores, dim=1) if from_logits else scores


def _bin_of(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin k holds confidences in (k/n, (k+1)/n]; a confidence of exactly 0 goes to bin 0."""
    return (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)


@dataclass
class CalibrationMeter:
    """Accumulates what ECE, NLL and Brier need, batch by batch (memory independent of the sample count)."""

    n_bins: int = N_BINS
    count: np.ndarray = field(init=False)
    confidence_sum: np.ndarray = field(init=False)
    correct_sum: np.ndarray = field(init=False)
    nll_sum: float = 0.0
    brier_sum: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if self.n_bins < 1:
            raise ValueError("n_bins must be >= 1")
        self.count = np.zeros(self.n_bins, dtype=np.int64)
        self.confidence_sum = np.zeros(self.n_bins)
        self.correct_sum = np.zeros(self.n_bins)

    def update(
        self, scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, from_logits: bool = True
    ) -> None:
        """Add a batch: ``scores`` [B, K] logits (or probabilities with ``from_logits=False``), ``labels`` [B]."""
        probs = _probs(scores, from_logits)
        labels = torch.as_tensor(labels).long().to(probs.device)
        if probs.ndim != 2 or len(probs) != len(labels):
            raise ValueError(
                f"expected scores [B, K] and labels [B], got {tuple(probs.shape)} and {tuple(labels.shape)}"
            )
        confidence, predicted = probs.max(dim=1)
        correct = (predicted == labels).double()
        bins = _bin_of(confidence, self.n_bins)
        self.count += torch.bincount(bins, minlength=self.n_bins).cpu().numpy()
        self.confidence_sum += torch.bincount(bins, weights=confidence, minlength=self.n_bins).cpu().numpy()
        self.correct_sum += torch.bincount(bins, weights=correct, minlength=self.n_bins).cpu().numpy()
        true_prob = probs.gather(1, labels[:, None]).squeeze(1)
        self.nll_sum += float(-torch.log(true_prob.clamp_min(1e-12)).sum())
        onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
        self.brier_sum += float(((probs - onehot) ** 2).sum())
        self.n += len(labels)

    @property
    def ece(self) -> float:
        if self.n == 0:
            return float("nan")
        gap = np.abs(self.correct_sum - self.confidence_sum)  # = count * |acc - conf| per bin
        return float(gap.sum() / self.n)

    @property
    def nll(self) -> float:
        return self.nll_sum / self.n if self.n else float("nan")

    @property
    def brier(self) -> float:
        return self.brier_sum / self.n if self.n else float("nan")

    def reliability(self) -> dict[str, list[float]]:
        """Per bin: edges, sample count, accuracy and mean confidence (NaN for an empty bin)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            accuracy = np.where(self.count > 0, self.correct_sum / self.count, np.nan)
            confidence = np.where(self.count > 0, self.confidence_sum / self.count, np.nan)
        return {
            "edges": np.linspace(0.0, 1.0, self.n_bins + 1).tolist(),
            "count": self.count.tolist(),
            "accuracy": accuracy.tolist(),
            "confidence": confidence.tolist(),
        }

    def result(self) -> dict[str, Any]:
        """All numbers as plain floats/lists (JSON ready); NaNs of empty bins become None."""
        bins = self.reliability()
        for key in ("accuracy", "confidence"):
            bins[key] = [None if np.isnan(v) else v for v in bins[key]]
        accuracy = float(self.correct_sum.sum() / self.n) if self.n else float("nan")
        return {
            "ece": self.ece,
            "nll": self.nll,
            "brier": self.brier,
            "accuracy": accuracy,
            "n": self.n,
            "n_bins": self.n_bins,
            "bins": bins,
        }


def calibration(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, n_bins: int = N_BINS, from_logits: bool = True
) -> dict[str, Any]:
    """ECE, NLL, Brier and the reliability bins of one array of scores (see :class:`CalibrationMeter`)."""
    meter = CalibrationMeter(n_bins)
    meter.update(scores, labels, from_logits=from_logits)
    return meter.result()


def expected_calibration_error(
    scores: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, n_bins: int = N_BINS, from_logits: bool = True
) -> float:
    """ECE with ``n_bins`` equal-width confidence bins (15 by default, as Guo et al.)."""
    return calibration(scores, labels, n_bins, from_logits)["ece"]
