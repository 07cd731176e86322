"""Evaluation metrics: robust accuracy (``robust``), calibration (``calibration``) and the forgetting events of
the training dynamics (``forgetting``). Import the submodule you need; nothing heavy is imported here."""

from akd_edge.metrics.calibration import CalibrationMeter, calibration, expected_calibration_error

__all__ = ["CalibrationMeter", "calibration", "expected_calibration_error"]
