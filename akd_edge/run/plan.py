"""What ``akd-edge run`` will do: its options, and the list of stages they make, known before any work starts.

The stages, in order: distill the student; compress it at each ``--prune`` ratio; export and verify the
student, each pruned student and each teacher that can be exported; write the report. Every stage has a key
(``export/<model>``) under which :mod:`akd_edge.run.ledger` records it, and a model name that is a plain
name (:func:`akd_edge.core.files.check_name`): it names the stage's folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from akd_edge.compress import FINETUNE_EPOCHS
from akd_edge.core.errors import UsageError
from akd_edge.core.files import check_name
from akd_edge.core.interval import REPORTED_N

if TYPE_CHECKING:
    from akd_edge.config import Recipe, TeacherSpec

TRANSFER = ("fast", "standard", "none")


@dataclass(frozen=True)
class PipelineOptions:
    """The settings of ``akd-edge run`` besides the recipe; every field is also a CLI option."""

    prune: tuple[float, ...] = ()
    """Pruning ratios (fraction of each layer's channels removed), each a compressed student; empty: none."""
    int8: bool = True
    """Export each student to int8 too (verified as a model of its own)."""
    teacher: bool = True
    """Export and verify the recipe's teachers (fp32), so the report places them beside the students."""
    prune_epochs: int = FINETUNE_EPOCHS
    """Robust fine-tuning epochs after pruning (0 = prune only)."""
    prune_steps: int = 1
    """Pruning steps, each followed by fine-tuning."""
    n: int = REPORTED_N
    """Test images of verify (and of compress's before/after comparison)."""
    square_queries: int = 1000
    """Queries of verify's Square attack."""
    transfer: str = "fast"
    """AutoAttack version run on the torch model for verify's transfer examples, or ``none``."""
    calib: int = 512
    """Training images that calibrate int8."""
    seed: int = 0
    """Seed of the attacks and of the calibration sample."""
    threads: int = 0
    """CPU threads of torch and onnxruntime in compress, export and verify (0 = their default); the recipe's
    ``run.threads`` applies to distillation."""

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.prune)
        bad = [r for r in ratios if not (math.isfinite(r) and 0 < r < 1)]
        if bad:
            raise UsageError(f"--prune {bad[0]}: a pruning ratio is a fraction of channels, between 0 and 1")
        object.__setattr__(self, "prune", tuple(sorted(set(ratios))))
        if self.prune_epochs < 0 or self.prune_steps < 1:
            raise UsageError("--prune-epochs must be >= 0 and the pruning steps >= 1")
        if self.n < 1 or self.square_queries < 0 or self.calib < 0 or self.threads < 0:
            raise UsageError("--n must be >= 1; --square-queries, --calib and --threads >= 0")
        if self.transfer not in TRANSFER:
            raise UsageError(f"--transfer {self.transfer!r}: use one of {', '.join(TRANSFER)}")
        if self.int8 and self.calib == 0:
            raise UsageError("int8 needs calibration images: give --calib N > 0, or --no-int8")


def parse_ratios(text: str) -> tuple[float, ...]:
    """``"0.3,0.5"`` as ratios (checked by :class:`PipelineOptions`); a UsageError naming a bad one."""
    ratios = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            ratios.append(float(part))
        except ValueError:
            raise UsageError(f"--prune {text!r}: {part!r} is not a number; give ratios such as 0.3,0.5") from None
    return tuple(ratios)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline."""

    key: str
    """Its key in pipeline.json: ``distill``, ``compress/<model>``, ``export/<model>``, ``verify/<model>``, ``report``."""
    kind: str
    model: str
    """The model the stage makes or works on (a plain name; it names the stage's folder); empty for the report."""
    title: str
    ratio: float | None = None
    teacher: TeacherSpec | None = None
    """For the export of a teacher: where it comes from."""


def pruned_name(student: str, ratio: float) -> str:
    return check_name(f"{student}-pruned-{ratio:g}", "pruned model name")


def _teacher_stem(spec: TeacherSpec) -> str:
    """A name for a teacher from where it comes from: the builtin's name, the run folder's, the file's stem."""
    if spec.path.startswith("builtin:"):
        return spec.path.removeprefix("builtin:")
    path = Path(spec.path)
    return path.parent.name if path.stem in ("best", "last") else path.stem if path.suffix else path.name


def exportable(spec: TeacherSpec) -> str | None:
    """None when ``export`` can take the teacher, else why not (an ONNX graph, a plain weights file)."""
    if spec.path.startswith("onnx:"):
        return "an onnx: teacher is an ONNX file already; verify it by exporting the checkpoint it came from"
    if spec.path.endswith(".safetensors") or (spec.factory and Path(spec.path).is_file()):
        return "a weights file (factory + state_dict) is not an akd-edge checkpoint, which export reads"
    return None


def teacher_names(recipe: Recipe, taken: set[str]) -> list[tuple[str, TeacherSpec]]:
    """A distinct plain name for each exportable teacher (``teacher-K`` where its own name will not do)."""
    named = []
    for index, spec in enumerate(recipe.teachers, 1):
        if exportable(spec) is not None:
            continue
        try:
            name = check_name(_teacher_stem(spec), "teacher name")
        except UsageError:
            name = f"teacher-{index}"
        if name in taken:
            name = f"teacher-{index}"
        taken.add(name)
        named.append((name, spec))
    return named


def plan_stages(recipe: Recipe, options: PipelineOptions) -> list[Stage]:
    """The stages of one ``akd-edge run``, in order."""
    student = recipe.run.name
    epochs = f"{recipe.train.epochs} epoch{'s' if recipe.train.epochs != 1 else ''}"
    stages = [Stage("distill", "distill", student, f"distill {student} ({recipe.method.name}, {epochs})")]
    models = [student]
    for ratio in options.prune:
        name = pruned_name(student, ratio)
        stages.append(Stage(f"compress/{name}", "compress", name, f"prune {student} at ratio {ratio:g}", ratio=ratio))
        models.append(name)
    teachers = teacher_names(recipe, set(models)) if options.teacher else []
    specs: dict[str, TeacherSpec | None] = {name: None for name in models} | dict(teachers)
    for name, spec in specs.items():
        what = "teacher " if spec is not None else ""
        stages.append(Stage(f"export/{name}", "export", name, f"export {what}{name}", teacher=spec))
        stages.append(Stage(f"verify/{name}", "verify", name, f"verify {what}{name} under onnxruntime", teacher=spec))
    stages.append(Stage("report", "report", "", "write the report"))
    return stages
