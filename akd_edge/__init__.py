"""akd-edge: robust compact models for the edge, via adversarial knowledge distillation.

The Python API (:mod:`akd_edge.api`) is importable from here; torch loads only when a function runs::

    import akd_edge as ae
    student, summary = ae.distill("fmnist-quickstart")
"""

import sys

from akd_edge.api import (
    compress,
    distill,
    evaluate,
    export,
    load_data,
    load_model,
    load_test_data,
    report,
    train_teacher,
    verify,
)
from akd_edge.core.package import ApiPackage
from akd_edge.core.version import __version__

sys.modules[__name__].__class__ = ApiPackage  # ae.compress stays the function when akd_edge.compress loads

__all__ = [  # the API's functions (akd_edge.api.__all__), listed so that linters see them re-exported
    "__version__",
    "compress",
    "distill",
    "evaluate",
    "export",
    "load_data",
    "load_model",
    "load_test_data",
    "report",
    "train_teacher",
    "verify",
]
