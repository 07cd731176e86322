"""Huang et al. 2023, AdaAD: ``a KL(T(x') || S(x')) + (1 - a) KL(T(x) || S(x))``, x' maximising the first KL."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.methods.base import METHODS, Task, Teacher, kl_to_probs


class StudentWithTeacher(nn.Module):
    """The student's logits beside the teacher's log-probabilities on the same input, in one tensor.

    The training attacks maximise ``loss_fn(model(x'), y)``; handing them this pair lets the loss involve
    the teacher at x' too, so its input gradient steers the attack. The teacher's parameters are frozen
    (no ``.grad`` appears on them: the attack differentiates with respect to x' only).
    """

    def __init__(self, student: nn.Module, teacher: Teacher) -> None:
        super().__init__()
        self.student = student
        self.teacher = teacher

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        teacher_probs = self.teacher.probs(x)
        if x.requires_grad and not teacher_probs.requires_grad:
            raise RuntimeError(
                "adaad differentiates the teacher with respect to its input, but the teacher runs without "
                "autograd: configure it with needs_grad=True (TeacherEnsemble.configure or accelerate_teacher)"
            )
        student_logits = self.student(x).float()
        return torch.cat([student_logits, teacher_probs.float().clamp_min(1e-12).log()], dim=1)


def split_pair(pair: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(student_logits, teacher_log_probs)`` from a :class:`StudentWithTeacher` output."""
    return pair.chunk(2, dim=1)


def teacher_student_kl(pair: torch.Tensor, _y: torch.Tensor | None = None) -> torch.Tensor:
    """Summed ``KL(T(x') || S(x'))`` over the batch, both on x' (the attack's objective, differentiable in x')."""
    student_logits, teacher_log_probs = split_pair(pair)
    student_log_probs = F.log_softmax(student_logits, dim=1)
    return (teacher_log_probs.exp() * (teacher_log_probs - student_log_probs)).sum()


@METHODS.register(
    "adaad",
    help="Adaptive adversarial distillation (Huang et al. 2023): x' maximises KL(T(x') || S(x')), the teacher in the attack",
)
class AdaptiveAdversarialDistillation(Task):
    """Teacher-guided inner maximisation: x' is where student and teacher disagree most, and there the
    student learns the teacher's output.

        x' = argmax_{x' in ball(x)} KL(T(x') || S(x'))
        loss = a * KL(T(x') || S(x')) + (1 - a) * KL(T(x) || S(x)),   a = method.adaad_alpha

    As the authors' code (github.com/boyellow/AdaAD): the attack's objective is ``AT_helper.py``
    ``adaad_inner_loss`` lines 30-40 (summed KL, student and teacher both in eval mode, both on x'), the
    outer loss ``main.py`` lines 326-353 (``AdaAD_alpha`` default 1.0, line 41). Differences: the KL is
    averaged over the batch ("batchmean"; their CIFAR-10 branch, line 342, used ``KLDivLoss()``'s elementwise
    mean, i.e. this divided by the number of classes), and x' starts from the attack's own random start
    instead of ``0.001 * N(0, 1)``. ``method.alpha`` and ``method.temperature`` are not used (temperature 1,
    as in their code). The teacher needs autograd in the attack (``teacher_needs_grad``).
    """

    name = "adaad"
    needs_teacher = True
    fixed_temperature = True
    teacher_needs_grad = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.teacher is not None
        self.pair = StudentWithTeacher(self.model, self.teacher)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        weight = self.cfg.adaad_alpha
        x_adv = x if self.attack is None else self.attack(self.pair, x, y, loss_fn=teacher_student_kl)
        adv_logits = self.model(x_adv)
        loss = weight * kl_to_probs(self.teacher_probs(x_adv), adv_logits)
        out = {"logits": adv_logits.detach(), "x_adv": x_adv}
        if weight < 1:
            clean_logits = self.model(x)
            loss = loss + (1 - weight) * kl_to_probs(self.teacher_probs(x), clean_logits)
            out["clean_logits"] = clean_logits.detach()
        return {"loss": loss, **out}
