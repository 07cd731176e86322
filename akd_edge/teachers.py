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
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        grad_mode = contextlib.nullcontext() if self.needs_grad else torch.inference_mode()
        precision = (
            torch.autocast(x.device.type, dtype=torch.bfloat16 if self.precision == "bf16" else torch.float16)
            if self.precision != "fp32"
            else contextlib.nullcontext()
        )
        total = None
        with grad_mode:
            with precision:
                logits = [member(x) for member in self.members]
            for weight, member_logits in zip(self.weights, logits, strict=True):
                p = torch.softmax(member_logits.float() / temperature, dim=1) * weight
                total = p if total is None else total + p
        return total if self.needs_grad else total.clone()  # clone outside inference_mode: a normal tensor

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
