"""The evaluation attacks: one batch in, per-sample robustness flags out.

:class:`AttackSpec` (PGD with per-batch seeds, AutoAttack, Square: what ``akd-edge eval --attack`` names) and
:class:`ConfigAttack` (a recipe's training attack, as validation runs it) both meet :class:`EvalAttack`, the
protocol of the streaming engine (:mod:`akd_edge.evaluation.engine`). A sample is robust under an attack
only when it is classified correctly and the attack does not fool it; the robust-accuracy figures built on
these flags are :mod:`akd_edge.metrics.robust`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from akd_edge.attacks import build_attack
from akd_edge.attacks.autoattack import STANDARD_QUERIES
from akd_edge.attacks.pgd import pgd
from akd_edge.core.env import forked_rng
from akd_edge.core.errors import UsageError
from akd_edge.models.mode import eval_mode

if TYPE_CHECKING:
    from akd_edge.config import AttackConfig

ATTACKS = ("pgd", "aa-fast", "aa-standard", "square")
"""Attack names of ``akd-edge eval --attack`` (``clean`` is always measured)."""
ALIASES = {"aa": "aa-standard", "autoattack": "aa-standard", "fast": "aa-fast", "apgd": "aa-fast"}
AA_VERSION = {"aa-fast": "fast", "aa-standard": "standard", "square": "square"}
AA_NAME = {version: name for name, version in AA_VERSION.items()}
"""AutoAttack version (``fast``, ``standard``, ``square``) -> attack name."""


def _check_norm_eps(norm: str, eps: float) -> None:
    if norm not in ("linf", "l2"):
        raise UsageError(f"norm must be linf or l2, got {norm!r}")
    if not math.isfinite(eps) or eps < 0:
        raise UsageError(f"eps must be a number >= 0, got {eps}")


@dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack and all its settings (they go into eval.json)."""

    name: str
    """``pgd``, ``aa-fast`` (APGD-CE + APGD-T), ``aa-standard`` (+ FAB-T + Square) or ``square``."""
    norm: str = "linf"
    eps: float = 0.1
    steps: int = 20
    """PGD steps (AutoAttack uses its own 100 iterations)."""
    restarts: int = 1
    """PGD random restarts; a sample must survive all of them."""
    step_size: float = 0.0
    """PGD step size; 0 means 2.5 * eps / steps (Madry et al.)."""
    n_queries: int = STANDARD_QUERIES
    """Square attack query budget (in ``aa-standard`` and ``square``)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in ATTACKS:
            raise UsageError(f"unknown attack {self.name!r}; use clean or one of {', '.join(ATTACKS)}")
        _check_norm_eps(self.norm, self.eps)
        if self.steps < 1 or self.restarts < 1 or self.n_queries < 1:
            raise UsageError("attack steps, restarts and queries must be >= 1")
        if not (math.isfinite(self.step_size) and self.step_size >= 0):  # NaN would fall back to the automatic step
            raise UsageError(
                f"the step size must be a finite number >= 0 (0 = 2.5 * eps / steps), got {self.step_size}"
            )

    @property
    def resolved_step_size(self) -> float:
        return self.step_size if self.step_size > 0 else 2.5 * self.eps / self.steps

    @property
    def white_box(self) -> tuple[str, ...]:
        """Names of the gradient-based parts of this attack."""
        return {"pgd": ("pgd",), "aa-fast": ("apgd-ce", "apgd-t"), "aa-standard": ("apgd-ce", "apgd-t", "fab-t")}.get(
            self.name, ()
        )

    @property
    def black_box(self) -> tuple[str, ...]:
        """Names of the output-only parts of this attack."""
        return ("square",) if self.name in ("aa-standard", "square") else ()

    def settings(self) -> dict[str, Any]:
        """The attack's settings as recorded in eval.json (only those that apply)."""
        out: dict[str, Any] = {"name": self.name, "norm": self.norm, "eps": self.eps, "seed": self.seed}
        if self.name == "pgd":
            out.update(
                steps=self.steps,
                restarts=self.restarts,
                step_size=self.resolved_step_size,
                random_start=True,
                loss="cross-entropy",
                iterate="last",
            )
        else:
            from akd_edge.attacks.autoattack import VERSIONS

            out.update(
                version=AA_VERSION[self.name], attacks=list(VERSIONS[AA_VERSION[self.name]]), restarts=1, cascade=True
            )
            if "square" in self.black_box:
                out["n_queries"] = self.n_queries
            if self.white_box:
                out["apgd_iterations"] = 100
        return out

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 0) -> AttackOutcome:
        """This attack on one batch (``batch`` seeds its random starts)."""
        return run_attack(model, x, y, self, batch)


def parse_attacks(names: Sequence[str]) -> list[str]:
    """Attack names from ``--attack`` values (repeatable and/or comma separated), aliases resolved."""
    out: list[str] = []
    for value in names:
        for raw in str(value).split(","):
            name = ALIASES.get(raw.strip().lower(), raw.strip().lower())
            if not name or name == "clean":
                continue
            if name not in ATTACKS:
                raise UsageError(
                    f"unknown attack {raw.strip()!r}; use clean, {', '.join(ATTACKS)} (aliases: {', '.join(ALIASES)})"
                )
            if name not in out:
                out.append(name)
    return out


@dataclass
class AttackOutcome:
    """One attack on one batch: worst-case inputs and per-sample robustness flags (bool, on CPU)."""

    x_adv: torch.Tensor
    robust: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    """Flags after each component (PGD restarts merged; AutoAttack's cascade, as it reports it)."""
    warnings: list[str] = field(default_factory=list)


class EvalAttack(Protocol):
    """What the evaluation engine runs: a name, its settings, and one batch in, per-sample flags out."""

    @property
    def name(self) -> str: ...

    @property
    def white_box(self) -> tuple[str, ...]: ...

    @property
    def black_box(self) -> tuple[str, ...]: ...

    def settings(self) -> dict[str, Any]: ...

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 0) -> AttackOutcome: ...


@dataclass(frozen=True)
class ConfigAttack:
    """A recipe's attack (:class:`~akd_edge.config.AttackConfig`: pgd, fgsm or none) as an evaluation attack.

    This is the attack validation (early stopping) and compress measure with: random starts come from
    the global RNG, so seed it before the pass (``torch.manual_seed``) for reproducible numbers. A sample
    counts as robust when the model classifies its adversarial example correctly.
    """

    cfg: AttackConfig

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def white_box(self) -> tuple[str, ...]:
        return () if self.cfg.name == "none" else (self.cfg.name,)

    @property
    def black_box(self) -> tuple[str, ...]:
        return ()

    def settings(self) -> dict[str, Any]:
        return self.cfg.settings()

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 0) -> AttackOutcome:
        attack = build_attack(self.cfg)
        with eval_mode(model):
            x_adv = attack(model, x, y) if attack is not None else x.detach().clone()
        robust = (predict(model, x_adv).argmax(1) == y).cpu()
        return AttackOutcome(x_adv=x_adv, robust=robust, parts={self.name: robust})


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode, the model's mode restored afterwards."""
    with eval_mode(model):
        return model(x)


def batch_seed(seed: int, batch: int, restart: int = 0) -> int:
    """A distinct, reproducible seed per (run seed, batch, restart): batches never share random starts."""
    return (seed * 1_000_003 + batch * 7_919 + restart) % (2**63 - 1)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, batch: int = 0) -> AttackOutcome:
    """PGD with restarts; a sample is robust only if every restart fails. Keeps, per sample, the
    fooling example of the first successful restart, else the one of highest cross-entropy."""
    best_x = x.detach().clone()
    best_score = torch.full((len(x),), -math.inf, device=x.device)
    robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
    for restart in range(spec.restarts):
        with forked_rng(x.device):
            torch.manual_seed(batch_seed(spec.seed, batch, restart))
            x_adv = pgd(
                model,
                x,
                y,
                eps=spec.eps,
                steps=spec.steps,
                step_size=spec.resolved_step_size,
                norm=spec.norm,
                random_start=True,
            )
        logits = predict(model, x_adv)
        fooled = logits.argmax(1) != y
        loss = F.cross_entropy(logits.float(), y, reduction="none")
        score = torch.where(fooled, torch.full_like(loss, math.inf), loss)  # keep the first fooling example
        better = score > best_score
        best_x[better] = x_adv[better]
        best_score = torch.where(better, score, best_score)
        robust &= ~fooled
    return AttackOutcome(x_adv=best_x, robust=robust.cpu(), parts={"pgd": robust.cpu()})


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, batch: int = 0) -> AttackOutcome:
    """AutoAttack (``aa-fast``, ``aa-standard``) or Square alone through the official package."""
    from akd_edge.attacks.autoattack import run_autoattack_report

    result = run_autoattack_report(
        model,
        x,
        y,
        norm=spec.norm,
        eps=spec.eps,
        version=AA_VERSION[spec.name],
        seed=batch_seed(spec.seed, batch),
        batch_size=len(x),
        n_queries=spec.n_queries,
    )
    return AttackOutcome(x_adv=result.x_adv, robust=result.robust, parts=result.per_attack, warnings=result.warnings)


def run_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, spec: AttackSpec, batch: int = 0) -> AttackOutcome:
    """Run ``spec`` on one batch; an attack with ``eps == 0`` is the clean evaluation."""
    if spec.eps == 0:
        robust = (predict(model, x).argmax(1) == y).cpu()
        return AttackOutcome(x_adv=x.detach().clone(), robust=robust, parts={spec.name: robust})
    if spec.name == "pgd":
        return pgd_attack(model, x, y, spec, batch)
    return autoattack(model, x, y, spec, batch)
