"""Robustness evaluation, kept importable under its old name: the code lives in :mod:`akd_edge.evaluation`.

``engine`` streams batches through clean evaluation and attacks (used by validation, eval and compress),
``report`` writes a checkpoint's ``eval.json``, ``dynamics`` the training-dynamics report.
"""

from akd_edge.evaluation.dynamics import evaluate_dynamics
from akd_edge.evaluation.engine import Evaluation, evaluate_batches, evaluate_model
from akd_edge.evaluation.report import EvalOptions, evaluate

__all__ = ["EvalOptions", "Evaluation", "evaluate", "evaluate_batches", "evaluate_dynamics", "evaluate_model"]
