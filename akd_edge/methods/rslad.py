"""Zi et al. 2021, RSLAD: ``5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x))``, x' maximising the first KL."""

from __future__ import annotations

import torch

from akd_edge.config import MethodConfig
from akd_edge.methods.base import METHODS, Task, kl_to_probs

ADV_WEIGHT = 5.0 / 6.0
"""Weight of the adversarial KL term, fixed as in the paper (the clean term gets 1 - ADV_WEIGHT)."""


@METHODS.register("rslad", help="Robust soft label distillation (Zi et al. 2021): teacher soft labels replace y")
class RobustSoftLabelDistillation(Task):
    """Train on the teacher's clean soft labels only: on the adversarial batch and, less, the clean one.

    The attack maximises ``KL(T(x) || S(x'))`` (the teacher's soft labels replace y, as in the paper),
    starting from the attack's own random start. The weights 5/6 and 1/6 and temperature 1 are the
    paper's and fixed: ``method.alpha`` and ``method.temperature`` are not used by this method.
    """

    name = "rslad"
    needs_teacher = True
    fixed_temperature = True

    @classmethod
    def teacher_sees_clean(cls, cfg: MethodConfig) -> bool:
        return True

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        soft_labels = self.teacher_probs(x)
        x_adv = self.adversarial(x, y, loss_fn=lambda logits, _y: kl_to_probs(soft_labels, logits))
        adv_logits = self.model(x_adv)
        clean_logits = self.model(x)
        loss = ADV_WEIGHT * kl_to_probs(soft_labels, adv_logits) + (1 - ADV_WEIGHT) * kl_to_probs(
            soft_labels, clean_logits
        )
        return {"loss": loss, "logits": adv_logits.detach(), "x_adv": x_adv, "clean_logits": clean_logits.detach()}
