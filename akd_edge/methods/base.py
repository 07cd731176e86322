"""The task base class, the loss helpers and the METHODS registry that every method file imports.

Every method (AT, TRADES, ARD, RSLAD, AKD) is a :class:`Task` with the same call signature, so one
training loop serves them all (as timm's ``task/distillation.py``). ``METHODS`` maps a recipe's
``method.name`` to its class; ``akd-edge methods`` lists them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.attacks.pgd import LossFn
from akd_edge.core.errors import ConfigError
from akd_edge.core.registry import Registry

if TYPE_CHECKING:
    from akd_edge.config import MethodConfig

log = logging.getLogger(__name__)

Attack = Callable[..., torch.Tensor]
"""``attack(model, x, y, loss_fn=None) -> x_adv`` as built by :func:`akd_edge.attacks.build_attack`."""


class Teacher(Protocol):
    """What a task needs of a teacher: :class:`akd_edge.teachers.TeacherEnsemble` satisfies it."""

    def probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor: ...


class MissingTeacherError(ConfigError, ValueError):
    """A distillation method was asked for without a teacher (a user mistake, hence a ConfigError)."""


class Task:
    """One training objective: builds the adversarial batch and the loss the student minimises.

    ``task(x, y)`` returns ``{"loss": scalar, "logits": student logits on x_adv (detached), "x_adv":
    the adversarial batch}``; methods that also run the student on the clean batch add
    ``"clean_logits"`` (detached). With ``attack=None`` (clean training) ``x_adv`` is ``x``.
    """

    needs_teacher: ClassVar[bool] = False
    teacher_needs_grad: ClassVar[bool] = False
    """Whether the objective differentiates the teacher's output with respect to its input (AdaAD's attack);
    the loop then runs the teacher with autograd (parameters stay frozen)."""
    fixed_temperature: ClassVar[bool] = False
    """Whether the objective uses temperature 1 as its paper does; ``method.temperature`` is then ignored, with a
    warning when it is set otherwise."""
    name: ClassVar[str] = ""

    def __init__(
        self,
        model: nn.Module,
        attack: Attack | None,
        cfg: MethodConfig,
        teacher: Teacher | None = None,
    ) -> None:
        if self.needs_teacher and teacher is None:
            raise MissingTeacherError(
                f"method {self.name!r} distils a teacher but none was given: add a [[teachers]] section "
                "to the recipe (for example path = 'builtin:fmnist-teacher') or use method.name = 'at'"
            )
        if self.fixed_temperature and cfg.temperature != 1.0:
            log.warning(
                "%s uses temperature 1 as in the paper; method.temperature=%s is ignored", self.name, cfg.temperature
            )
        self.model = model
        self.attack = attack
        self.cfg = cfg
        self.teacher = teacher
        self.clean_cache: Any = None
        """A :class:`~akd_edge.teachers.CleanTeacherCache` of the training set, set by the loop when usable."""
        self._clean: tuple[torch.Tensor, torch.Tensor] | None = None
        self.progress = 0.0
        """Fraction of training done, in [0, 1]: set by the loop each epoch (see :meth:`set_progress`)."""

    @classmethod
    def teacher_sees_clean(cls, cfg: MethodConfig) -> bool:
        """Whether the teacher only ever sees the clean batch (then its outputs can be cached per image)."""
        return False

    def set_progress(self, fraction: float) -> None:
        """Tell the task how far training is (epochs completed / epochs), for schedules such as IAD's warm-up.

        The loop calls it at the start of every epoch; a task used outside the loop stays at 0 unless told.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"training progress must be in [0, 1], got {fraction}")
        self.progress = float(fraction)

    def use_clean_batch(self, x: torch.Tensor, idx: torch.Tensor) -> None:
        """Tell the task which dataset images the next batch ``x`` holds, for :attr:`clean_cache` lookups."""
        self._clean = (x, idx)

    def adversarial(self, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn | None = None) -> torch.Tensor:
        """The attack's batch against the student (``x`` itself when training is clean)."""
        if self.attack is None:
            return x
        return self.attack(self.model, x, y, loss_fn=loss_fn)

    def teacher_probs(self, x: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The teacher's probabilities, never part of the autograd graph (teachers are frozen)."""
        assert self.teacher is not None
        if self.clean_cache is not None and self._clean is not None and x is self._clean[0]:
            return self.clean_cache.probs(self._clean[1], temperature)  # the very batch the loop announced
        with torch.no_grad():
            return self.teacher.probs(x, temperature).float()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.forward(x, y)


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Batch mean of ``-sum_k q_k log softmax(logits)_k``: cross-entropy against a distribution."""
    return -(target_probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def kl_to_probs(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(target || softmax(logits))`` averaged over the batch ("batchmean"); target is a constant."""
    entropy_term = torch.xlogy(target_probs, target_probs).sum(dim=1)
    return (entropy_term - (target_probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1)).mean()


def kl_per_sample(target_probs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(target || softmax(logits))`` of each sample (shape ``[batch]``), for per-sample weighting."""
    entropy_term = torch.xlogy(target_probs, target_probs).sum(dim=1)
    return entropy_term - (target_probs * F.log_softmax(logits.float(), dim=1)).sum(dim=1)


def kl_between_logits(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(target_logits) || softmax(logits))``, batch mean; differentiable in both arguments."""
    log_p = F.log_softmax(target_logits.float(), dim=1)
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


METHODS: Registry[type[Task]] = Registry("method")


def create_task(cfg: MethodConfig, model: nn.Module, attack: Attack | None, teacher: Teacher | None = None) -> Task:
    """The task named by ``cfg.name``."""
    return METHODS.get(cfg.name)(model, attack, cfg, teacher)
