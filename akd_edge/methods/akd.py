"""Maroto et al. 2022, AKD: ``CE(S(x'), alpha p_T + (1 - alpha) onehot(y))``, x' PGD on the student's CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from akd_edge.config import MethodConfig
from akd_edge.methods.base import METHODS, Task, soft_cross_entropy


@METHODS.register(
    "akd", help="Adversarial knowledge distillation (Maroto et al. 2022): CE against teacher-mixed labels"
)
class AdversarialKnowledgeDistillation(Task):
    """Adversarial training whose labels are mixed with the teacher's probabilities.

    x' is PGD against the student's cross-entropy with the true labels. The teacher sees x'
    (``method.teacher_input = "adv"``, as in the paper) or the clean x (``"clean"``). The loss is

        alpha * t^2 * CE(softmax(S(x') / t), p_T(., t)) + (1 - alpha) * CE(S(x'), y)

    with ``t = method.temperature``: the temperature softens teacher *and* student in the distillation
    term, which is scaled by t^2 (Hinton's convention, as in ARD); the label term stays at t = 1.
    Cross-entropy is linear in its target, so with t = 1 this is exactly ``CE(S(x'), q)`` with
    ``q = alpha * p_T + (1 - alpha) * onehot(y)``; alpha = 0 is PGD-AT and alpha = 1 pure distillation.
    """

    name = "akd"
    needs_teacher = True

    @classmethod
    def teacher_sees_clean(cls, cfg: MethodConfig) -> bool:
        return cfg.teacher_input == "clean"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t, alpha = self.cfg.temperature, self.cfg.alpha
        x_adv = self.adversarial(x, y)
        logits = self.model(x_adv)
        loss = torch.zeros((), device=logits.device)
        if alpha > 0:
            teacher_probs = self.teacher_probs(x_adv if self.cfg.teacher_input == "adv" else x, t)
            loss = loss + alpha * (t * t) * soft_cross_entropy(logits.float() / t, teacher_probs)
        if alpha < 1:
            loss = loss + (1 - alpha) * F.cross_entropy(logits.float(), y)
        return {"loss": loss, "logits": logits.detach(), "x_adv": x_adv}
