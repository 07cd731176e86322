"""Training objectives as tasks: ``task(x, y) -> {"loss", "logits", "x_adv"}``, one file per method.

Every method (AT, TRADES, ARD, RSLAD, AKD, AdaAD, IAD, SAAD-style) is a :class:`Task` with the same call
signature, so one training loop serves them all (as timm's ``task/distillation.py``). ``METHODS`` maps a recipe's
``method.name`` to its class; ``akd-edge methods`` lists them. The base class and registry live in
:mod:`akd_edge.methods.base`, which the method files import (so this package never imports itself).
"""

from akd_edge.methods import adaad, akd, ard, at, iad, rslad, saad, trades  # noqa: F401  (the methods register themselves)
from akd_edge.methods.base import (
    METHODS,
    Attack,
    LossFn,
    MissingTeacherError,
    Task,
    Teacher,
    create_task,
    kl_between_logits,
    kl_per_sample,
    kl_to_probs,
    soft_cross_entropy,
)

__all__ = [
    "METHODS",
    "Attack",
    "LossFn",
    "MissingTeacherError",
    "Task",
    "Teacher",
    "create_task",
    "kl_between_logits",
    "kl_per_sample",
    "kl_to_probs",
    "soft_cross_entropy",
]
