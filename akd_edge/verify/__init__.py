"""Verification of exported models under onnxruntime (torch for the attacks, never to run the models).

``akd_edge.verify.runtime``: onnxruntime sessions with clear errors, batched prediction, timings.
``akd_edge.verify.transfer``: AutoAttack on the torch model, whose examples are scored under onnxruntime.
``akd_edge.verify.report``: ``verify_export``, which puts it together for an export folder; the query-only
Square attack on each session is the official one, through ``akd_edge.attacks.autoattack.run_square``;
``replay_export``, which replays the worst-case examples verify kept on the other runtimes here.
``akd_edge.verify.replay``: those examples (``replay.npz``), their tolerances and runtimes.
"""

from akd_edge.verify.report import replay_export, verify_export
from akd_edge.verify.runtime import ModelFileError, OrtClassifier

__all__ = ["ModelFileError", "OrtClassifier", "replay_export", "verify_export"]
