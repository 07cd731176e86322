"""Verification of exported models under onnxruntime; numpy and onnxruntime only (torch only for transfer).

``akd_edge.verify.runtime``: onnxruntime sessions with clear errors, batched prediction, timings.
``akd_edge.verify.square``: the Square attack in numpy, on any ``predict_fn``.
``akd_edge.verify.transfer``: AutoAttack on the torch model (the one torch-dependent module).
``akd_edge.verify.report``: ``verify_export``, which puts it together for an export folder.
"""

from akd_edge.verify.report import verify_export
from akd_edge.verify.runtime import ModelFileError, OrtClassifier
from akd_edge.verify.square import square_attack

__all__ = ["ModelFileError", "OrtClassifier", "square_attack", "verify_export"]
