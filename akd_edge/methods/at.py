"""Madry et al. 2018, PGD adversarial training: ``CE(S(x'), y)`` with x' maximising the student's CE."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from akd_edge.methods.base import METHODS, Task


@METHODS.register("at", help="PGD adversarial training (Madry et al. 2018): CE on the student's adversarial batch")
class AdversarialTraining(Task):
    """Minimise the cross-entropy of the student on its own worst-case (PGD) examples."""

    name = "at"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x_adv = self.adversarial(x, y)
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits.float(), y)
        return {"loss": loss, "logits": logits.detach(), "x_adv": x_adv}
