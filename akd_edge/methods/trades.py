"""Zhang et al. 2019, TRADES: ``CE(S(x), y) + beta * KL(S(x) || S(x'))``, x' maximising that KL."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from akd_edge.methods.base import METHODS, Task, kl_between_logits, kl_to_probs
from akd_edge.models.mode import eval_mode


@METHODS.register("trades", help="TRADES (Zhang et al. 2019): clean CE + beta * KL(clean || adversarial)")
class Trades(Task):
    """Trade clean accuracy (CE on x) against smoothness (KL between the clean and adversarial outputs).

    The attack maximises ``KL(S(x) || S(x'))`` with ``S(x)`` fixed at its eval-mode value, as in the
    official code. At ``x' = x`` that KL has zero gradient, so the attack needs a random start: it uses
    the attack's own (``attack.random_start``, uniform in the ball) instead of the paper's
    ``0.001 * N(0, 1)``; with ``random_start = false`` the sign of a zero gradient leaves x' at x.
    ``beta`` is ``method.beta`` (6 in the paper); ``alpha`` and ``temperature`` are not used.
    """

    name = "trades"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad(), eval_mode(self.model):
            clean_probs = torch.softmax(self.model(x).float(), dim=1)
        x_adv = self.adversarial(x, y, loss_fn=lambda logits, _y: kl_to_probs(clean_probs, logits))
        clean_logits = self.model(x)
        adv_logits = self.model(x_adv)
        natural = F.cross_entropy(clean_logits.float(), y)
        robust = kl_between_logits(clean_logits, adv_logits)
        return {
            "loss": natural + self.cfg.beta * robust,
            "logits": adv_logits.detach(),
            "x_adv": x_adv,
            "clean_logits": clean_logits.detach(),
        }
