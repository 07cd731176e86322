"""Zhu et al. 2022, IAD: ARD plus introspection, ``(1 - p_T(y|x')^beta) KL(S(x) || S(x'))`` per sample."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from akd_edge.methods.base import METHODS, Task, kl_to_probs


def introspection(clean_logits: torch.Tensor, adv_logits: torch.Tensor, trust: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``(1 - trust_i) KL(S(x_i) || S(x'_i))``, differentiable in both logits (as IAD's code)."""
    log_p = F.log_softmax(clean_logits.float(), dim=1)
    log_q = F.log_softmax(adv_logits.float(), dim=1)
    return ((log_p.exp() * (log_p - log_q)).sum(dim=1) * (1 - trust)).mean()


@METHODS.register(
    "iad", help="Introspective adversarial distillation (Zhu et al. 2022): trust the teacher by p_T(y|x')^beta"
)
class IntrospectiveAdversarialDistillation(Task):
    """Distil the teacher, but lean on the student's own clean prediction where the teacher fails on x'.

    IAD-I (the variant built on ARD), with ``a = method.alpha``, ``t = method.temperature``,
    ``w_i = p_T(y_i | x'_i)^beta`` (``beta = method.iad_beta``, teacher at temperature 1, no gradient):

        loss = a t^2 KL(T(x)/t || S(x')/t)
               + a * mean_i (1 - w_i) KL(S(x_i) || S(x'_i))      [once progress >= method.iad_warmup]
               + (1 - a) CE(S(x), y)

    x' is PGD against the student's cross-entropy. A teacher that keeps the true class on x' (w near 1)
    is trusted as in ARD; where it does not, the introspection term pulls S(x') towards the student's own
    S(x) (gradient through both, as the authors' code). Source: github.com/ZFancy/IAD ``IAD-I.py`` lines
    165-181 (commit a8091a8), defaults ``beta = 0.1`` (line 34), introspection from epoch 60 of 200 (line
    35: ``iad_warmup = 0.3``), ``temp = 1`` and ``alpha = 1`` (lines 26, 29; here ``method.alpha`` as for
    ARD, 0.9 unless set). KL terms are batch means ("batchmean"), as in their code. The warm-up reads
    :attr:`Task.progress`, which the training loop sets each epoch. IAD-II (on AKD2, with an extra
    self-teacher) is not implemented.
    """

    name = "iad"
    needs_teacher = True

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        t, alpha = self.cfg.temperature, self.cfg.alpha
        x_adv = self.adversarial(x, y)
        adv_logits = self.model(x_adv)
        clean_logits = self.model(x)
        loss = alpha * (t * t) * kl_to_probs(self.teacher_probs(x, t), adv_logits.float() / t)
        if self.progress >= self.cfg.iad_warmup and alpha > 0:
            trust = self.teacher_probs(x_adv).gather(1, y[:, None]).squeeze(1).pow(self.cfg.iad_beta)
            loss = loss + alpha * introspection(clean_logits, adv_logits, trust)
        if alpha < 1:
            loss = loss + (1 - alpha) * F.cross_entropy(clean_logits.float(), y)
        return {"loss": loss, "logits": adv_logits.detach(), "x_adv": x_adv, "clean_logits": clean_logits.detach()}
