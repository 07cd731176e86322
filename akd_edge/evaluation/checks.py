"""Sanity checks of a robustness evaluation (after AutoAttack's ``checks.py``): each one names a way an
evaluation can overstate robustness, and warns when it sees it.

* the model returns probabilities instead of logits (attacks on the cross-entropy of probabilities are
  weak, and a probability output is what a softmax left in the graph looks like);
* zero input gradients (a round, sign or quantisation inside the model, or a saturated softmax): gradient
  attacks then stall and robust accuracy is overstated;
* non-deterministic outputs (dropout or noise left on at inference): each attack step sees another model;
* a black-box attack (Square) fooling samples that all the white-box attacks left alone: the classic sign
  of gradient masking.

Checks never raise; each returns a :class:`CheckResult` whose ``ok`` is False when it warns.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MASKING_THRESHOLD = 0.002
"""Share of samples a black-box attack may fool beyond the white-box ones before it warns (AutoAttack's)."""


@dataclass
class CheckResult:
    """The outcome of one check: ``ok`` False means the evaluation may be unreliable, ``message`` says why."""

    name: str
    ok: bool
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_logits(model: nn.Module, x: torch.Tensor, tol: float = 1e-4) -> CheckResult:
    """Warn when every output row lies in [0, 1] and sums to 1: the model returns probabilities."""
    from akd_edge.models.mode import eval_mode

    with eval_mode(model), torch.no_grad():
        out = model(x).float()
    is_probs = bool(out.min() >= -tol and out.max() <= 1 + tol and ((out.sum(1) - 1).abs() < tol).all())
    message = (
        "the model seems to return probabilities, not logits (outputs in [0, 1] summing to 1): gradient "
        "attacks on them are weak; remove the final softmax"
        if is_probs
        else "outputs look like logits"
    )
    return CheckResult("logits", not is_probs, message, {"min": float(out.min()), "max": float(out.max())})


def _input_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x).float()
        if loss == "ce":
            value = F.cross_entropy(logits, y, reduction="sum")
        else:  # the logit margin does not saturate like the softmax does
            other = logits.clone()
            other[torch.arange(len(y)), y] = -torch.inf
            value = (other.max(1).values - logits.gather(1, y[:, None]).squeeze(1)).sum()
        (grad,) = torch.autograd.grad(value, x, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def check_zero_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> CheckResult:
    """Warn when some samples have an all-zero input gradient of the cross-entropy (what PGD follows)."""
    from akd_edge.models.mode import eval_mode

    with eval_mode(model):
        try:
            ce = _input_grads(model, x, y, "ce").flatten(1).abs().sum(1)
            margin = _input_grads(model, x, y, "margin").flatten(1).abs().sum(1)
        except RuntimeError as err:  # e.g. an output that does not require grad at all
            return CheckResult(
                "zero_gradients",
                False,
                f"input gradients cannot be computed ({err}): gradient attacks cannot work on this model",
                {"fraction": 1.0},
            )
    zero_ce, zero_margin = int((ce == 0).sum()), int((margin == 0).sum())
    details = {"samples": len(x), "zero_ce": zero_ce, "zero_margin": zero_margin, "fraction": zero_ce / max(len(x), 1)}
    if zero_ce == 0:
        return CheckResult("zero_gradients", True, "input gradients are non-zero", details)
    if zero_margin:
        message = (
            f"{zero_margin}/{len(x)} samples have zero input gradients even of the logit margin: the model "
            "is not differentiable in its input (round, sign or quantisation inside?); gradient attacks "
            "overstate its robustness, rely on the black-box (square) result"
        )
    else:
        message = (
            f"{zero_ce}/{len(x)} samples have zero cross-entropy gradients (saturated softmax, over-confident "
            "logits): PGD stalls on them; check with aa-fast (its targeted DLR loss does not saturate)"
        )
    return CheckResult("zero_gradients", False, message, details)


def check_determinism(model: nn.Module, x: torch.Tensor, repeats: int = 3, tol: float = 1e-5) -> CheckResult:
    """Warn when repeated forward passes in eval mode differ (randomness left on at inference)."""
    from akd_edge.models.mode import eval_mode

    with eval_mode(model), torch.no_grad():
        outputs = [model(x).float() for _ in range(max(repeats, 2))]
    diff = max(float((o - outputs[0]).abs().max()) for o in outputs[1:])
    flips = max(int((o.argmax(1) != outputs[0].argmax(1)).sum()) for o in outputs[1:])
    scale = float(outputs[0].abs().max()) or 1.0
    ok = diff <= tol * max(scale, 1.0)
    message = (
        "outputs are deterministic"
        if ok
        else f"outputs change between identical forward passes (max difference {diff:.3g}, {flips} predictions "
        "flipped): a randomised model needs EOT attacks; attacks here may overstate its robustness"
    )
    return CheckResult("determinism", ok, message, {"max_abs_diff": diff, "flipped": flips})


def check_gradient_masking(
    clean: torch.Tensor,
    white: Sequence[torch.Tensor],
    black: Sequence[torch.Tensor],
    threshold: float = MASKING_THRESHOLD,
) -> CheckResult:
    """Warn when black-box attacks fool more than ``threshold`` of the samples that resist every white-box one.

    ``clean``, ``white`` and ``black`` are per-sample bool flags (correct clean; robust to each attack).
    """
    if not white or not black:
        missing = "a black-box attack (square or aa-standard)" if white else "a white-box attack (pgd or aa-fast)"
        return CheckResult("gradient_masking", True, f"not checked: needs {missing} as well", skipped=True)
    clean = torch.as_tensor(clean, dtype=torch.bool)
    white_robust = clean.clone()
    for flags in white:
        white_robust &= torch.as_tensor(flags, dtype=torch.bool)
    black_robust = torch.ones_like(clean)
    for flags in black:
        black_robust &= torch.as_tensor(flags, dtype=torch.bool)
    beaten = white_robust & ~black_robust
    n = max(int(clean.numel()), 1)
    share = int(beaten.sum()) / n
    details = {
        "black_box_only": int(beaten.sum()),
        "share": share,
        "threshold": threshold,
        "white_box_robust_acc": int(white_robust.sum()) / n,
        "black_box_robust_acc": int((clean & black_robust).sum()) / n,
    }
    if share <= threshold:
        return CheckResult("gradient_masking", True, "the black-box attack did not beat the white-box attacks", details)
    message = (
        f"the black-box attack fooled {int(beaten.sum())} samples ({share:.2%}) that every white-box attack "
        "missed: a sign of gradient masking; trust the worst case, and try more queries or adaptive attacks"
    )
    return CheckResult("gradient_masking", False, message, details)


def run_model_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[CheckResult]:
    """The checks that only need the model and one batch: logits, zero gradients, determinism."""
    results = [check_logits(model, x), check_zero_gradients(model, x, y), check_determinism(model, x)]
    for result in results:
        if not result.ok:
            log.warning("sanity check %s: %s", result.name, result.message)
    return results
