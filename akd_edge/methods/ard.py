"""Goldblum et al. 2020, ARD: ``alpha t^2 KL(T(x)/t || S(x')/t) + (1 - alpha) CE(S(x), y)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from akd_edge.config import MethodConfig
from akd_edge.methods.base import METHODS, Task, kl_to_probs


@METHODS.register("ard", help="Adversarially robust distillation (Goldblum et al. 2020): KD on x', CE on x")
class AdversariallyRobustDistillation(Task):
    """Match the teacher's clean outputs on the student's adversarial examples, plus clean CE.

    As in the paper's code, x' is PGD against the student's cross-entropy, the teacher sees the clean
    batch, and both teacher and student logits are divided by ``t = method.temperature`` in the KL term,
    which is multiplied by ``t^2`` (Hinton's scaling keeps its gradient size independent of t).
    ``alpha = method.alpha`` weighs the KL term against clean CE. The KL is averaged over the batch
    ("batchmean"); the official code used ``KLDivLoss()``'s elementwise mean, i.e. this divided by the
    number of classes.
    """

    name = "ard"
    needs_teacher = True

    @classmethod
    def teacher_sees_clean(cls, cfg: MethodConfig) -> bool:
        return True

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t, alpha = self.cfg.temperature, self.cfg.alpha
        x_adv = self.adversarial(x, y)
        adv_logits = self.model(x_adv)
        clean_logits = self.model(x)
        teacher_probs = self.teacher_probs(x, t)
        distill = kl_to_probs(teacher_probs, adv_logits.float() / t) * (t * t)
        loss = alpha * distill + (1 - alpha) * F.cross_entropy(clean_logits.float(), y)
        return {"loss": loss, "logits": adv_logits.detach(), "x_adv": x_adv, "clean_logits": clean_logits.detach()}
