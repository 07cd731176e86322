"""Calibration metrics: known values, the perfect case, and streaming equal to the whole-array result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from akd_edge.metrics.calibration import CalibrationMeter, calibration, expected_calibration_error


def test_perfect_confident_correct_predictions_have_zero_error() -> None:
    labels = torch.tensor([0, 1, 2, 1, 0])
    probs = torch.nn.functional.one_hot(labels, 3).double()
    result = calibration(probs, labels, from_logits=False)
    assert result["ece"] == 0.0
    assert result["brier"] == 0.0
    assert result["nll"] == pytest.approx(0.0, abs=1e-9)
    assert result["accuracy"] == 1.0


def test_toy_case_matches_hand_computed_values() -> None:
    # Top confidences 0.95 (right), 0.94 (wrong) share bin 14 of 15; 0.85 (wrong), 0.62 (right) and
    # 0.70 (right) fall into bins 12, 9 and 10.
    probs = np.array([[0.95, 0.05], [0.94, 0.06], [0.15, 0.85], [0.38, 0.62], [0.30, 0.70]])
    labels = np.array([0, 1, 0, 1, 1])
    result = calibration(probs, labels, from_logits=False)
    ece = (2 * abs(0.5 - 0.945) + abs(0 - 0.85) + abs(1 - 0.62) + abs(1 - 0.70)) / 5
    nll = -(math.log(0.95) + math.log(0.06) + math.log(0.15) + math.log(0.62) + math.log(0.70)) / 5
    brier = (2 * 0.05**2 + 2 * 0.94**2 + 2 * 0.85**2 + 2 * 0.38**2 + 2 * 0.30**2) / 5
    assert result["ece"] == pytest.approx(ece, abs=1e-12)
    assert result["nll"] == pytest.approx(nll, abs=1e-12)
    assert result["brier"] == pytest.approx(brier, abs=1e-12)
    assert result["bins"]["count"][14] == 2 and sum(result["bins"]["count"]) == 5
    assert result["bins"]["accuracy"][14] == pytest.approx(0.5)
    assert result["bins"]["accuracy"][0] is None  # empty bin


def test_logits_are_softmaxed_and_confidence_one_lands_in_last_bin() -> None:
    logits = torch.tensor([[100.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 1])
    result = calibration(logits, labels)
    assert result["bins"]["count"][14] == 1  # confidence 1.0 is in (14/15, 1]
    assert result["bins"]["count"][7] == 1  # 0.5 is in (7/15, 8/15]
    # The 0.5/0.5 tie predicts class 0 (argmax), so it is wrong with confidence 0.5.
    assert result["ece"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.5)


def test_streaming_in_batches_equals_one_pass() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(257, 10, generator=generator) * 3
    labels = torch.randint(0, 10, (257,), generator=generator)
    meter = CalibrationMeter()
    for start in range(0, 257, 64):
        meter.update(logits[start : start + 64], labels[start : start + 64])
    whole = calibration(logits, labels)
    assert meter.n == 257
    assert meter.ece == pytest.approx(whole["ece"], abs=1e-12)
    assert meter.nll == pytest.approx(whole["nll"], abs=1e-12)
    assert meter.brier == pytest.approx(whole["brier"], abs=1e-12)
    assert 0 <= whole["ece"] <= 1 and 0 <= whole["brier"] <= 2


def test_overconfident_model_has_higher_error_than_tempered_one() -> None:
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (2000,), generator=generator)
    logits = torch.randn(2000, 5, generator=generator)
    logits[torch.arange(1000), labels[:1000]] += 2.0  # half the samples lean to the right class
    assert expected_calibration_error(logits * 10, labels) > expected_calibration_error(logits, labels)
