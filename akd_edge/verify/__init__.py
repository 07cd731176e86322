"""Verification of exported models under onnxruntime (torch for the attacks, never to run the models).

The models run through :mod:`akd_edge.core.ort` (onnxruntime sessions with clear errors, batched
prediction, timings).
``akd_edge.verify.command``, ``akd-edge verify``: ``verify_export`` (one folder) and ``verify_exports``
(several at once, sharing what they have in common), and ``replay_export``, which replays the worst-case
examples verify kept on the other runtimes here.
``akd_edge.verify.inputs``: what verify reads from a folder, checked; ``akd_edge.verify.data``: the test images.
``akd_edge.verify.attacks``: which attacks run, once each (the query-only Square attack on each session is the
official one, through ``akd_edge.attacks.autoattack.run_square``); ``akd_edge.verify.transfer``: AutoAttack on
the torch model, whose examples are scored under onnxruntime; ``akd_edge.verify.pool``: their batches on
worker processes of one thread each.
``akd_edge.verify.scoring``: accuracies, the worst case, warnings and speed.
``akd_edge.verify.replay``: the worst-case examples (``replay.npz``) and the runtimes they are replayed on.
"""

from akd_edge.core.ort import ModelFileError, OrtClassifier
from akd_edge.verify.command import replay_export, verify_export, verify_exports

__all__ = ["ModelFileError", "OrtClassifier", "replay_export", "verify_export", "verify_exports"]
