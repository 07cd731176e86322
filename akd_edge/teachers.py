"""Teachers: load early-stopped checkpoints and average an ensemble's probabilities."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
from torch import nn

from akd_edge.config import TeacherSpec
from akd_edge.errors import ConfigError
from akd_edge.train.checkpoint import load_model

log = logging.getLogger(__name__)


class TeacherEnsemble(nn.Module):
    """Frozen teachers whose softmax probabilities are averaged with normalised weights (AKD guideline 2)."""

    def __init__(self, models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not models:
            raise ValueError("a teacher ensemble needs at least one teacher")
        weights = list(weights) if weights is not None else [1.0] * len(models)
        if len(weights) != len(models) or min(weights) <= 0:
            raise ValueError("one positive weight per teacher is required")
        self.members = nn.ModuleList(models)
        total = sum(weights)
        self.register_buffer("weights", torch.tensor([w / total for w in weights]), persistent=False)
        for param in self.parameters():
            param.requires_grad_(False)
        self.eval()
        self.configure()

    def configure(self, *, channels_last: bool = False, precision: str = "fp32", needs_grad: bool = False) -> None:
        """How :meth:`probs` runs the members (see ``akd_edge.train.accel.accelerate_teacher``).

        ``channels_last`` converts inputs (the members must have been converted too); ``precision`` is the
        autocast precision (fp32, bf16, fp16); ``needs_grad=False`` runs under ``torch.inference_mode``,
        ``True`` keeps autograd so an objective can differentiate the teacher's output.
        """
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"teacher precision must be fp32, bf16 or fp16, got {precision!r}")
        self.channels_last, self.precision, self.needs_grad = channels_last, precision, needs_grad

    def train(self, mode: bool = True) -> TeacherEnsemble:
        return super().train(False)  # teachers stay in eval mode whatever the student does

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Weighted average of the members' ``softmax(logits / temperature)``, in float32.

        Without ``needs_grad`` no autograd graph is built (``inference_mode``); the result is a normal
        tensor, usable as a target in the student's loss.
        """
        grad_mode = contextlib.nullcontext() if self.needs_grad else torch.inference_mode()
        with grad_mode:
            total = self.combine(self.member_logits(x), temperature)
        return total if self.needs_grad else total.clone()  # clone outside inference_mode: a normal tensor

    def member_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's logits on ``x`` (in the configured layout and precision; autograd as the caller has it)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.precision == "fp32":
            return [member(x) for member in self.members]
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        with torch.autocast(x.device.type, dtype=dtype):
            return [member(x) for member in self.members]

    def combine(self, logits: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
        """The weighted average of ``softmax(logits / temperature)`` over members, in float32."""
        total = None
        for weight, member_logits in zip(self.weights, logits, strict=True):
            p = torch.softmax(member_logits.float() / temperature, dim=1) * weight
            total = p if total is None else total + p
        assert total is not None
        return total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log of the ensemble probabilities: usable as logits by evaluation code."""
        return self.probs(x).clamp_min(1e-12).log()


def load_teachers(
    specs: Sequence[TeacherSpec],
    device: str | torch.device = "cpu",
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> TeacherEnsemble:
    """Load each teacher (early-stopped ``best`` by default) and check it fits the student's data."""
    models, weights = [], []
    for spec in specs:
        model, meta = load_model(spec.path, spec.which, device, spec.factory or None)
        arch = meta["arch"]
        if input_shape is not None and tuple(arch["input_shape"]) != tuple(input_shape):
            raise ConfigError(
                f"teacher {spec.path} takes inputs of shape {tuple(arch['input_shape'])}, "
                f"the data has {tuple(input_shape)}"
            )
        if num_classes is not None and arch["num_classes"] != num_classes:
            raise ConfigError(f"teacher {spec.path} has {arch['num_classes']} classes, the data has {num_classes}")
        val = meta.get("val", {})
        log.info("teacher %s (%s, epoch %s): val %s", spec.path, meta["path"], meta.get("epoch"), val)
        models.append(model)
        weights.append(spec.weight)
    return TeacherEnsemble(models, weights).to(device)


class CleanTeacherCache:
    """The teachers' logits on every clean training image, computed once at the start of a run.

    Objectives whose teacher sees the clean, unaugmented batch (ARD, RSLAD, AKD with ``teacher_input =
    "clean"``) then read the teacher's probabilities instead of running it every step. The logits are
    computed in fixed batches in dataset order, so a resumed run reads exactly what an uninterrupted one does.
    """

    MAX_BYTES = 1 << 30
    """Larger caches (members x images x classes x 4 bytes) are not built; the teacher runs every step."""

    def __init__(self, teacher: TeacherEnsemble, logits: torch.Tensor) -> None:
        self.teacher = teacher
        self.logits = logits  # [members, images, classes], float32

    @classmethod
    def build(
        cls, teacher: TeacherEnsemble, dataset: object, batch_size: int, device: torch.device, num_classes: int
    ) -> CleanTeacherCache | None:
        """The cache of ``dataset`` (an ImageDataset), or None when it would exceed :attr:`MAX_BYTES`."""
        from akd_edge.data import iterate_batches

        n, members = len(dataset), len(teacher.members)
        if members * n * num_classes * 4 > cls.MAX_BYTES:
            log.info("teacher outputs of %d images not cached (over %d MiB)", n, cls.MAX_BYTES >> 20)
            return None
        logits = torch.empty(members, n, num_classes, device=device)
        with torch.inference_mode():
            for x, _, idx in iterate_batches(dataset, batch_size, device=device):
                for m, member_logits in enumerate(teacher.member_logits(x)):
                    logits[m, idx.to(device)] = member_logits.float()
        return cls(teacher, logits.clone())

    def probs(self, idx: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The ensemble's probabilities for the images ``idx`` of the cached dataset."""
        rows = idx.to(self.logits.device)
        return self.teacher.combine([member[rows] for member in self.logits], temperature)
