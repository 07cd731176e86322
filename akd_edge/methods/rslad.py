"""Zi et al. 2021, RSLAD: ``5/6 KL(T(x) || S(x')) + 1/6 KL(T(x) || S(x))``, x' maximising the first KL."""

from __future__ import annotations

import logging
from typing import Any

import torch

from akd_edge.config import MethodConfig
from akd_edge.methods.base import METHODS, Task, kl_to_probs

log = logging.getLogger(__name__)

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.cfg.temperature != 1.0:
            log.warning(
                "rslad uses temperature 1 as in the paper; method.temperature=%s is ignored", self.cfg.temperature
            )

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
