"""Verification of exported models under onnxruntime (torch for the attacks, never to run the models).

The models run through :mod:`akd_edge.core.ort` (onnxruntime sessions with clear errors, batched
prediction, timings).
``akd_edge.verify.transfer``: AutoAttack on the torch model, whose examples are scored under onnxruntime.
``akd_edge.verify.command``, ``akd-edge verify``: ``verify_export``, which puts it together for an export
folder (the query-only Square attack on each session is the official one, through
``akd_edge.attacks.autoattack.run_square``), and ``replay_export``, which replays the worst-case examples
verify kept on the other runtimes here.
``akd_edge.verify.replay``: those examples (``replay.npz``) and the runtimes they are replayed on.
"""

from akd_edge.core.ort import ModelFileError, OrtClassifier
from akd_edge.verify.command import replay_export, verify_export

__all__ = ["ModelFileError", "OrtClassifier", "replay_export", "verify_export"]
