"""akd-edge: robust compact models for the edge, via adversarial knowledge distillation.

The Python API (:mod:`akd_edge.api`) is importable from here; it imports torch and the rest only when a
function runs, so ``import akd_edge`` stays instant::

    import akd_edge as ae
    student, summary = ae.distill("fmnist-quickstart")
"""

from akd_edge.api import (
    compress,
    distill,
    evaluate,
    export,
    load_data,
    load_test_data,
    train_teacher,
    verify,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "compress",
    "distill",
    "evaluate",
    "export",
    "load_data",
    "load_test_data",
    "train_teacher",
    "verify",
]
