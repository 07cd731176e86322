"""Teachers: load them from any source (checkpoint, ONNX, weights file), record where each came from, and
average an ensemble's probabilities (``ensemble``); an ONNX file from any framework as a frozen teacher
(``onnx``, run by onnxruntime)."""

from akd_edge.teachers.ensemble import (
    CleanTeacherCache,
    TeacherEnsemble,
    load_teachers,
    require_autograd,
    teacher_labels,
    teacher_provenance,
)

__all__ = [
    "CleanTeacherCache",
    "TeacherEnsemble",
    "load_teachers",
    "require_autograd",
    "teacher_labels",
    "teacher_provenance",
]
