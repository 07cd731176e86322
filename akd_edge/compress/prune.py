"""Structured channel pruning with torch-pruning; the history it returns is what a checkpoint saves.

:func:`prune_model` returns torch-pruning's history as plain lists; the checkpoint entry built from it and
its replay on load live beside the checkpoints, in :mod:`akd_edge.models.pruned`. Measuring a model
is :mod:`akd_edge.compress.measure`; the ``akd-edge compress`` pipeline is :mod:`akd_edge.compress.command`.

Pruning is local: every prunable layer loses the same fraction of its output channels (the classifier
and any layer the user keeps are left alone), ranked by group magnitude (L2) or by first-order Taylor
importance of the adversarial training loss. Each layer keeps the multiple of ``round_to`` nearest to
the channel count the ratio asks for, so the pruned model maps onto SIMD/tensor-core kernels, and never
fewer than ``round_to`` channels. (torch-pruning alone rounds down after flooring, so 32 channels at
ratio 0.25 become 16, and it tries to remove a layer below ``round_to`` entirely, then skips it, so
channel counts jump back up as the ratio grows; either breaks the ratio search for a budget.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from akd_edge.core.env import model_device
from akd_edge.core.errors import UsageError
from akd_edge.models.mode import eval_mode
from akd_edge.models.pruned import plain_history

log = logging.getLogger(__name__)

IMPORTANCES = ("magnitude", "taylor")
MAX_RATIO = 0.95
"""Largest pruning ratio accepted: at least 5% of each layer's channels survive."""


@dataclass(frozen=True)
class PruneSpec:
    """How to prune: exactly one of ``ratio``, ``target_params`` and ``target_macs``, and the settings."""

    ratio: float | None = None
    """Fraction of each prunable layer's channels to remove, in (0, 0.95]."""
    target_params: int | None = None
    """Parameter budget; the ratio is searched so the pruned model has at most this many."""
    target_macs: int | None = None
    """MAC budget of one image; the ratio is searched so the pruned model needs at most this many."""
    steps: int = 1
    """Iterative pruning steps (the ratio grows linearly to its final value); fine-tuning follows each."""
    importance: str = "magnitude"
    """``magnitude`` (group L2 norm) or ``taylor`` (|w * dL/dw| of the adversarial loss)."""
    round_to: int = 8
    """Channel counts become multiples of this (1 = no rounding)."""
    keep: tuple[str, ...] = ()
    """Module names (as in ``model.named_modules()``) never pruned, besides the classifier."""
    taylor_batches: int = 4
    """Training batches whose adversarial-loss gradients rank channels for ``taylor`` importance."""

    def __post_init__(self) -> None:
        given = [name for name in ("ratio", "target_params", "target_macs") if getattr(self, name) is not None]
        if len(given) != 1:
            what = "none of them" if not given else " and ".join(f"--{g.replace('_', '-')}" for g in given)
            raise UsageError(
                f"give exactly one of --ratio, --target-params and --target-macs (got {what}); "
                "for example --ratio 0.5 removes half of each layer's channels"
            )
        if self.ratio is not None and not 0 < self.ratio <= MAX_RATIO:
            raise UsageError(
                f"--ratio {self.ratio} is out of range: it is the fraction of channels removed, in (0, {MAX_RATIO}]"
            )
        for name in ("target_params", "target_macs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive count, got {value}")
        if self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance {self.importance!r}: use one of {', '.join(IMPORTANCES)}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be >= 1 (1 = no rounding), got {self.round_to}")
        if self.taylor_batches < 1:
            raise UsageError("taylor_batches must be >= 1")

    @property
    def target(self) -> tuple[str, int] | None:
        """``("params" | "macs", budget)`` when a budget is given, else None."""
        if self.target_params is not None:
            return "params", int(self.target_params)
        if self.target_macs is not None:
            return "macs", int(self.target_macs)
        return None

    def settings(self) -> dict[str, Any]:
        """Plain values (JSON and ``weights_only`` safe)."""
        return {
            "ratio": self.ratio,
            "target_params": self.target_params,
            "target_macs": self.target_macs,
            "steps": self.steps,
            "importance": self.importance,
            "round_to": self.round_to,
            "keep": list(self.keep),
        }


# ----------------------------------------------------------------------------------------------
# pruner construction


def example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """The tracing input of the dependency graph: one image of ``input_shape`` on the model's device."""
    return torch.zeros(1, *(int(v) for v in input_shape), device=model_device(model))


def resolve_keep(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    """The modules named by the user; a name may omit the ``net.`` prefix of the normalising wrapper."""
    import difflib

    modules = dict(model.named_modules())
    found = []
    for name in names:
        module = modules.get(name, modules.get(f"net.{name}"))
        if module is None or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(
                f"--keep {name!r}: no such module in the model.{hint} Names are those of "
                "model.named_modules(), for example net.features.0"
            )
        found.append(module)
    return found


def ignored_layers(model: nn.Module, keep: Iterable[str] = ()) -> list[nn.Module]:
    """The classifier head plus the user's kept modules: torch-pruning removes none of their outputs."""
    from akd_edge.models import get_classifier

    return [get_classifier(model), *resolve_keep(model, keep)]


@functools.cache
def _pruner_class() -> type:
    """torch-pruning's BasePruner keeping each layer at the nearest multiple of ``round_to``, never below it."""
    import torch_pruning as tp

    class RoundedPruner(tp.pruner.BasePruner):
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            quotient, remainder = divmod(current_channels - n_pruned, round_to)
            keep = (quotient + (remainder > round_to / 2)) * round_to  # nearest multiple, ties prune more
            keep = min(max(keep, min(round_to, current_channels)), current_channels)
            return current_channels - keep

    if not hasattr(tp.pruner.BasePruner, "_round_to"):  # guard against a torch-pruning refactor
        log.warning("torch-pruning %s has no BasePruner._round_to; channel rounding uses its default", tp.__version__)
    return RoundedPruner


def make_pruner(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    ratio: float,
    steps: int = 1,
    importance: str = "magnitude",
    round_to: int = 8,
    keep: Iterable[str] = (),
) -> Any:
    """A torch-pruning pruner removing ``ratio`` of each layer's channels in ``steps`` calls to ``step()``.

    The dependency graph is traced in eval mode, so BatchNorm running statistics are left untouched.
    """
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise UsageError(f"importance {importance!r}: use one of {', '.join(IMPORTANCES)}")
    scorer = (
        tp.importance.GroupTaylorImportance() if importance == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    )
    with eval_mode(model), torch.enable_grad():
        return _pruner_class()(
            model,
            example_input(model, input_shape),
            importance=scorer,
            pruning_ratio=float(ratio),
            iterative_steps=int(steps),
            round_to=int(round_to),  # also 1: the override then keeps every layer at >= 1 channel
            ignored_layers=ignored_layers(model, keep),
        )


def accumulate_gradients(model: nn.Module, loss_fn: Callable[[], torch.Tensor], batches: int) -> None:
    """Fill ``.grad`` of every parameter with the sum of ``batches`` evaluations of ``loss_fn()`` (for Taylor)."""
    model.zero_grad(set_to_none=True)
    for _ in range(batches):
        loss_fn().backward()
    for param in model.parameters():  # torch-pruning's Taylor scores read .grad of every layer in a group
        if param.grad is None:
            param.grad = torch.zeros_like(param)


def prune_model(
    model: nn.Module,
    input_shape: Sequence[int],
    ratio: float,
    *,
    steps: int = 1,
    round_to: int = 8,
    keep: Iterable[str] = (),
    importance: str = "magnitude",
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, list[list[Any]]], None] | None = None,
) -> list[list[Any]]:
    """Prune ``model`` in place by ``ratio`` in ``steps`` steps; returns the (plain) history.

    ``before_step(k)`` runs before step k (1-based), for example to compute Taylor gradients;
    ``after_step(k, history)`` after it, for example to fine-tune.
    """
    pruner = make_pruner(
        model, input_shape, ratio=ratio, steps=steps, importance=importance, round_to=round_to, keep=keep
    )
    for k in range(1, steps + 1):
        if before_step is not None:
            before_step(k)
        pruner.step()
        history = plain_history(pruner.pruning_history())
        if after_step is not None:
            after_step(k, history)
    return plain_history(pruner.pruning_history())


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name (for reports and tests)."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
