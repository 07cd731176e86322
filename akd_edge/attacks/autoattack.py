"""AutoAttack (Croce & Hein, 2020) through the official ``pyautoattack`` package.

``standard`` is the published ensemble (APGD-CE, APGD-T, FAB-T, Square 5000 queries) with its published
settings; ``fast`` keeps the two gradient attacks (APGD-CE + APGD-T), the usual cheap proxy; ``square``
is the black-box Square attack alone (it only needs outputs, so it also attacks an onnxruntime model
wrapped as a module). A sample counts as robust only if it is classified correctly and no attack fools
it: the worst case per sample, as AutoAttack reports it.

The package logs through the ``auto-attack`` logger and its attacks print only when verbose; any stray
print is captured and sent to this module's logger at DEBUG, so library code never prints.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from akd_edge.errors import UsageError

log = logging.getLogger(__name__)

VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "fast": ("apgd-ce", "apgd-t"),
    "square": ("square",),
}
"""Attack sets by version name, in the order AutoAttack runs them."""
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t")
BLACK_BOX = ("square",)
TARGETED = ("apgd-t", "fab-t")
NORMS = {"linf": "Linf", "l2": "L2"}


def min_classes(version: str) -> int:
    """Classes a model needs for ``version``: the targeted attacks need at least 4."""
    return 4 if any(attack in TARGETED for attack in VERSIONS[version]) else 2


@dataclass
class AutoAttackResult:
    """Everything one AutoAttack run produced: adversarial images, per-attack flags, settings, warnings."""

    x_adv: torch.Tensor
    """Worst-case inputs: an attack's successful example where one fooled the model, else the clean input."""
    clean: torch.Tensor
    """bool [N]: classified correctly without attack."""
    per_attack: dict[str, torch.Tensor]
    """Attack name -> bool [N] robustness flags (see ``individual`` of :func:`run_autoattack_report`)."""
    robust: torch.Tensor
    """bool [N]: worst case over all attacks (and clean)."""
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    """Warnings of AutoAttack's own checks (softmax outputs, randomness, zero gradients, ...)."""
    seconds: float = 0.0


class _Collect(logging.Handler):
    """Collects the WARNING records AutoAttack's checks emit, to put them in the report."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in self.messages:
            self.messages.append(message)


def _device_of(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _build(
    model: nn.Module, norm: str, eps: float, seed: int, n_queries: int, n_classes: int, device: torch.device
) -> Any:
    """An AutoAttack object with the ``standard`` version's settings (the published ones)."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, norm=NORMS[norm], eps=eps, version="standard", seed=seed, device=device)
    adversary.verbose = False
    adversary.square.n_queries = n_queries
    targets = min(9, n_classes - 1)  # the published 9 target classes need 10 classes or more
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    return adversary


def _check_args(norm: str, eps: float, version: str, n_queries: int, batch_size: int) -> None:
    if norm not in NORMS:
        raise UsageError(f"AutoAttack norm {norm!r} is not supported; use one of {', '.join(NORMS)}")
    if version not in VERSIONS:
        raise UsageError(f"AutoAttack version {version!r} is unknown; use one of {', '.join(VERSIONS)}")
    if eps <= 0:
        raise UsageError(f"AutoAttack needs eps > 0, got {eps}; use clean accuracy for eps = 0")
    if n_queries < 1 or batch_size < 1:
        raise UsageError("AutoAttack needs n_queries >= 1 and batch_size >= 1")


def _attack_subset(
    adversary: Any, attack: str, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one attack of the ensemble through ``run_standard_evaluation``; returns (x_adv, fooled)."""
    adversary.attacks_to_run = [attack]
    adversary.version = "custom"
    stray = io.StringIO()
    tracer = sys.gettrace()  # its dynamic-defence check calls sys.settrace(None): keep debuggers/coverage alive
    try:
        with contextlib.redirect_stdout(stray):
            x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        sys.settrace(tracer)
    if stray.getvalue().strip():
        log.debug("pyautoattack output: %s", stray.getvalue().strip())
    return x_adv, y_adv.to(y.device) != y


def run_autoattack_report(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 500,
    n_queries: int = 5000,
    device: str | torch.device | None = None,
    individual: bool = False,
) -> AutoAttackResult:
    """Run AutoAttack on images ``x`` in [0, 1] with labels ``y``; the model returns logits.

    ``individual=False`` runs the attacks as a cascade, as AutoAttack does: each attack only sees the
    samples that survived the previous ones, and ``per_attack[name]`` is robustness *after* that attack
    (so the last entry is the worst case). ``individual=True`` runs every attack on every correctly
    classified sample (costlier) and ``per_attack[name]`` is robustness to that attack alone; this is
    what a gradient-masking check (black box beating white box) needs.
    """
    from akd_edge.attacks import eval_mode

    _check_args(norm, eps, version, n_queries, batch_size)
    device = _device_of(model, device)
    attacks = VERSIONS[version]
    x = x.detach().to(device).float()
    y = y.detach().to(device).long()
    start = time.perf_counter()
    collect = _Collect()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(collect)
    aa_level = aa_logger.level
    aa_logger.setLevel(logging.WARNING)  # its INFO/DEBUG progress lines are noise here; warnings are kept
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with eval_mode(model), torch.random.fork_rng(devices=fork_devices), torch.no_grad():
            logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
            n_classes = logits.shape[1]
            if n_classes < min_classes(version):
                raise UsageError(
                    f"the targeted attacks of AutoAttack need at least 4 classes, the model has {n_classes}; "
                    "use version='square' (or PGD)"
                )
            clean = logits.argmax(1) == y
            adversary = _build(model, norm, eps, seed, n_queries, n_classes, device)
            x_adv = x.clone()
            robust = clean.clone()
            per_attack: dict[str, torch.Tensor] = {}
            for attack in attacks:
                pool = clean if individual else robust
                idx = pool.nonzero().flatten()
                flags = clean.clone() if individual else robust.clone()
                if len(idx):
                    adv_sub, fooled = _attack_subset(adversary, attack, x[idx], y[idx], batch_size)
                    hit = idx[fooled]
                    flags[hit] = False
                    newly = robust[hit]  # keep the first successful example of each sample
                    x_adv[hit[newly]] = adv_sub[fooled][newly]
                    robust[hit] = False
                log.debug("%s: robust %d/%d", attack, int(flags.sum()), len(flags))
                per_attack[attack] = flags.cpu()
    finally:
        aa_logger.removeHandler(collect)
        aa_logger.setLevel(aa_level)
    for message in collect.messages:
        log.warning("AutoAttack check: %s", message)
    settings = {
        "attack": "autoattack",
        "version": version,
        "attacks": list(attacks),
        "norm": norm,
        "eps": eps,
        "seed": seed,
        "n_queries": n_queries if "square" in attacks else None,
        "apgd_iterations": 100 if any(a.startswith("apgd") for a in attacks) else None,
        "restarts": 1,
        "n_target_classes": min(9, n_classes - 1),
        "individual": individual,
        "n_samples": len(x),
    }
    return AutoAttackResult(
        x_adv=x_adv.detach(),
        clean=clean.cpu(),
        per_attack=per_attack,
        robust=robust.cpu(),
        settings=settings,
        warnings=collect.messages,
        seconds=time.perf_counter() - start,
    )


def run_autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "linf",
    eps: float,
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 500,
    n_queries: int = 5000,
    device: str | torch.device | None = None,
    individual: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AutoAttack: ``(x_adv, per_attack)``; see :func:`run_autoattack_report` for the flags' meaning.

    The worst-case robustness per sample is ``per_attack[last]`` (cascade) or the AND of all entries
    (either mode); ``model(x_adv).argmax(1) == y`` gives the same flags.
    """
    result = run_autoattack_report(
        model,
        x,
        y,
        norm=norm,
        eps=eps,
        version=version,
        seed=seed,
        batch_size=batch_size,
        n_queries=n_queries,
        device=device,
        individual=individual,
    )
    return result.x_adv, result.per_attack
