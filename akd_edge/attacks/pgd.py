"""Projected gradient descent (Madry et al. 2018) in the Linf or L2 ball, for images in [0, 1]."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.config.schema import NORMS
from akd_edge.core.errors import DataError
from akd_edge.models.mode import eval_mode

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, y) -> scalar`` that an attack maximises (default: cross-entropy)."""
_TINY = 1e-12


def _per_sample_l2(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """The closest point to ``delta`` in the ``norm`` ball of radius ``eps`` (per sample)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _per_sample_l2(delta).clamp_min(_TINY)).clamp(max=1.0)
    return delta * scale


def random_delta(x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """A perturbation drawn uniformly from the ball (Linf: per coordinate; L2: by volume)."""
    if norm == "linf":
        return torch.empty_like(x).uniform_(-eps, eps)
    direction = torch.randn_like(x)
    direction = direction / _per_sample_l2(direction).clamp_min(_TINY)
    dims = x[0].numel()
    radius = eps * torch.rand(x.shape[0], device=x.device, dtype=x.dtype).pow(1.0 / dims)
    return direction * radius.view(-1, *([1] * (x.dim() - 1)))


def ascent_step(grad: torch.Tensor, step_size: float, norm: str) -> torch.Tensor:
    """The steepest-ascent step of the norm: the gradient's sign (Linf) or its direction (L2)."""
    if norm == "linf":
        return step_size * grad.sign()
    return step_size * grad / _per_sample_l2(grad).clamp_min(_TINY)


def check_attack_args(x: torch.Tensor, eps: float, norm: str, check_range: bool = True) -> None:
    """Reject a bad threat model (a programming error) and, with ``check_range``, inputs outside [0, 1]."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if check_range:
        check_unit_range(x)


def check_unit_range(x: torch.Tensor) -> None:
    """Raise DataError unless every value of ``x`` is in [0, 1]; reads the values, so a GPU waits for it.

    Call it once per dataset (or where untrusted tensors come in), not per attack call: batches made by
    ``akd_edge.data.iterate_batches`` are uint8 / 255 and in range by construction.
    """
    if x.numel() and bool((x.min() < 0) | (x.max() > 1)):
        raise DataError(
            f"attack inputs must be images in [0, 1], got values in [{x.min().item():.3g}, {x.max().item():.3g}]; "
            "normalisation belongs inside the model (akd_edge.models.Normalize), not in the data"
        )


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    loss_fn: LossFn | None = None,
    check_range: bool = True,
) -> torch.Tensor:
    """Maximise ``loss_fn(model(x'), y)`` over ``x'`` in the eps-ball around ``x`` and in [0, 1].

    Returns the last iterate, detached. The model runs in eval mode (each submodule's mode is restored
    afterwards); gradients are taken with respect to the input only, so no ``.grad`` is left on the
    parameters. ``loss_fn`` defaults to the summed cross-entropy. ``eps == 0`` returns ``x`` unchanged.
    ``check_range=False`` skips the [0, 1] check of ``x`` (the only host sync here) for inputs already
    checked where the dataset was loaded; nothing in the step loop waits for a GPU.
    """
    check_attack_args(x, eps, norm, check_range)
    if steps < 0 or step_size < 0:
        raise ValueError(f"steps and step_size must be >= 0, got {steps} and {step_size}")
    x = x.detach()
    if eps == 0 or (steps == 0 and not random_start):
        return x.clone()
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits.float(), target, reduction="sum"))
    start = random_delta(x, eps, norm) if random_start else torch.zeros_like(x)
    x_adv = (x + start).clamp(0.0, 1.0)
    with eval_mode(model), torch.enable_grad():
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() + ascent_step(grad, step_size, norm)
            x_adv = (x + project(x_adv - x, eps, norm)).clamp(0.0, 1.0)
    return x_adv.detach()
