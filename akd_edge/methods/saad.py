"""SAAD-style distillation (after Lee and Chung 2025): ``mean_i w_i KL(T(x'_i) || S(x'_i))``, w by transferability."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from akd_edge.methods.base import METHODS, Task, kl_per_sample, kl_to_probs


def transfer_weights(scores: torch.Tensor) -> torch.Tensor:
    """``(s - min s) / mean(s - min s)``: mean 1 over the batch, 0 for the least transferable sample.

    Uniform weights when every score is equal (nothing to prefer). Never part of the autograd graph.
    """
    shifted = (scores - scores.min()).detach().float()
    mean = shifted.mean()
    return torch.where(mean > 0, shifted / mean.clamp_min(1e-12), torch.ones_like(shifted))  # no host sync


@METHODS.register(
    "saad",
    help="SAAD-style (after Lee & Chung 2025): adversarial KD weighted by how well x' transfers to the teacher",
)
class SampleAdaptiveAdversarialDistillation(Task):
    """Weight each sample's distillation term by how far the student's adversarial example also fools the teacher.

        x' = argmax_{x' in ball(x)} KL(T(x) || S(x'))
        s_i = H(T(x'_i))  (``saad_weight = "entropy"``)  or  CE(T(x'_i), y_i)  (``"loss"``)
        w_i = (s_i - min_j s_j) / mean_k (s_k - min_j s_j)         (mean 1; uniform if all s are equal)
        loss = mean_i w_i KL(T(x'_i) || S(x'_i))

    "Robust saturation" (Lee and Chung, "Sample-wise Adaptive Weighting for Transfer Consistency in
    Adversarial Distillation", arXiv 2512.10275, TMLR 2026): the student gains where its adversarial
    examples transfer to the teacher. This is SAAD-style, not a reproduction of their code
    (github.com/HongsinLee/saad, ``saad.py`` lines 51-81, commit 435e6b2), which weights by the same
    min-shifted teacher entropy on x' but scales it by ``entropy_scale = 5`` instead of normalising it,
    adds an IGDM gradient-matching term ``(epoch/epochs) KL(S(x'+) - S(x'-) || T(x'+) - T(x'-))`` and an
    optional clean term (weight 0 in their ``main.sh``), and attacks a linearised teacher
    (``attacks.py`` ``saad_inner_loss``); here the attack is RSLAD's, their ``lambda_inner = 0``.
    ``method.alpha`` and ``method.temperature`` are not used.
    """

    name = "saad"
    needs_teacher = True

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        clean_probs = self.teacher_probs(x)
        x_adv = self.adversarial(x, y, loss_fn=lambda logits, _y: kl_to_probs(clean_probs, logits))
        adv_logits = self.model(x_adv)
        teacher_adv = self.teacher_probs(x_adv)
        weights = transfer_weights(self.transfer_scores(teacher_adv, y))
        loss = (weights * kl_per_sample(teacher_adv, adv_logits)).mean()
        return {"loss": loss, "logits": adv_logits.detach(), "x_adv": x_adv, "weights": weights}

    def transfer_scores(self, teacher_probs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample score of how well x' fools the teacher: its entropy or its cross-entropy on x'."""
        if self.cfg.saad_weight == "loss":
            return F.nll_loss(teacher_probs.clamp_min(1e-12).log(), y, reduction="none")
        return -torch.xlogy(teacher_probs, teacher_probs).sum(dim=1)
