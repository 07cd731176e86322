"""Training objectives as tasks: ``task(x, y) -> {"loss", "logits", "x_adv"}``, one file per method.

Every method (AT, TRADES, ARD, RSLAD, AKD, AdaAD, IAD, SAAD-style) is a :class:`Task` with the same call
signature, so one training loop serves them all (as timm's ``task/distillation.py``). ``METHODS`` maps a recipe's
``method.name`` to its class; ``akd-edge methods`` lists them. A new objective is one file here, named after the
method it registers (``akd_edge/methods/NAME.py``): it is found and imported by its file name. The base class and registry live in
:mod:`akd_edge.methods.base`, which the method files import (so this package never imports itself).
"""

import importlib

from akd_edge.core.registry import method_files
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

for _name in method_files():  # each file registers its objective; the file is named after it
    importlib.import_module(f"{__name__}.{_name}")

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
