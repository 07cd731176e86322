"""AutoAttack (Croce & Hein, 2020) through the official ``pyautoattack`` package.

``standard`` is the published ensemble (APGD-CE, APGD-T, FAB-T, Square 5000 queries) with its published
settings; ``fast`` keeps the two gradient attacks (APGD-CE + APGD-T), the usual cheap proxy; ``square``
is the black-box Square attack alone as AutoAttack runs it. :func:`run_square` runs the official
``SquareAttack`` on any ``predict(x) -> logits`` callable with settings of the caller's choosing: it only
needs outputs, so ``akd-edge verify`` attacks an onnxruntime session with it. A sample counts as robust
only if it is classified correctly and no attack fools it: the worst case per sample, as AutoAttack
reports it.

The package logs through the ``auto-attack`` logger and its attacks print only when verbose; any stray
print is captured and sent to this module's logger at DEBUG, so library code never prints.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from akd_edge.core.env import forked_rng
from akd_edge.core.errors import UsageError

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
AUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}
"""The norms AutoAttack and Square run with: the recipe's name -> pyautoattack's spelling."""
SQUARE_LOSSES = ("margin", "ce")

PredictFn = Callable[[torch.Tensor], torch.Tensor]
"""``predict(x float32 [N, C, H, W] in [0, 1]) -> logits [N, classes]``; no gradients needed."""
SquareProgressFn = Callable[[int, int], None]
"""``progress(done, total)`` in Square iterations over all batches (approximate: counted from model calls)."""


STANDARD_QUERIES = 5000
"""Square's queries in AutoAttack's published ``standard`` version."""


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

    adversary = AutoAttack(model, norm=AUTOATTACK_NORMS[norm], eps=eps, version="standard", seed=seed, device=device)
    adversary.verbose = False
    adversary.square.n_queries = n_queries
    targets = min(9, n_classes - 1)  # the published 9 target classes need 10 classes or more
    adversary.apgd_targeted.n_target_classes = targets
    adversary.fab.n_target_classes = targets
    return adversary


def check_args(norm: str, eps: float, version: str, n_queries: int, batch_size: int) -> None:
    """A UsageError for a norm, version, eps, query count or batch size AutoAttack cannot run with."""
    if norm not in AUTOATTACK_NORMS:
        raise UsageError(f"AutoAttack norm {norm!r} is not supported; use one of {', '.join(AUTOATTACK_NORMS)}")
    if version not in VERSIONS:
        raise UsageError(f"AutoAttack version {version!r} is unknown; use one of {', '.join(VERSIONS)}")
    if eps <= 0:
        raise UsageError(f"AutoAttack needs eps > 0, got {eps}; use clean accuracy for eps = 0")
    if n_queries < 1 or batch_size < 1:
        raise UsageError("AutoAttack needs n_queries >= 1 and batch_size >= 1")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Send anything the package prints to this module's logger at DEBUG: library code never prints."""
    stray = io.StringIO()
    try:
        with contextlib.redirect_stdout(stray):
            yield
    finally:
        if stray.getvalue().strip():
            log.debug("pyautoattack output: %s", stray.getvalue().strip())


def _attack_subset(
    adversary: Any, attack: str, x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one attack of the ensemble through ``run_standard_evaluation``; returns (x_adv, fooled)."""
    adversary.attacks_to_run = [attack]
    adversary.version = "custom"
    tracer = sys.gettrace()  # its dynamic-defence check calls sys.settrace(None): keep debuggers/coverage alive
    try:
        with _quiet():
            x_adv, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        sys.settrace(tracer)
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
    n_queries: int = STANDARD_QUERIES,
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
    check_args(norm, eps, version, n_queries, batch_size)
    device = _device_of(model, device)
    attacks = VERSIONS[version]
    x = x.detach().to(device).float()
    y = y.detach().to(device).long()
    start = time.perf_counter()
    with _attacking(model, device) as collect:
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
    for message in collect.messages:
        log.warning("AutoAttack check: %s", message)
    return AutoAttackResult(
        x_adv=x_adv.detach(),
        clean=clean.cpu(),
        per_attack=per_attack,
        robust=robust.cpu(),
        settings=autoattack_settings(version, norm, eps, seed, n_queries, n_classes, individual, len(x)),
        warnings=collect.messages,
        seconds=time.perf_counter() - start,
    )


@contextlib.contextmanager
def _collect_warnings() -> Iterator[_Collect]:
    """Within the block, the warnings of AutoAttack's checks are collected (its INFO/DEBUG lines dropped)."""
    collect = _Collect()
    aa_logger = logging.getLogger("auto-attack")
    aa_logger.addHandler(collect)
    aa_level = aa_logger.level
    aa_logger.setLevel(logging.WARNING)  # its INFO/DEBUG progress lines are noise here; warnings are kept
    try:
        yield collect
    finally:
        aa_logger.removeHandler(collect)
        aa_logger.setLevel(aa_level)


@contextlib.contextmanager
def _attacking(model: nn.Module, device: torch.device) -> Iterator[_Collect]:
    """The block an AutoAttack run needs: the model in eval mode, no autograd graph, torch's random state put
    back afterwards (AutoAttack reseeds it) and the warnings of its checks collected."""
    from akd_edge.models.mode import eval_mode

    with _collect_warnings() as collect, eval_mode(model), forked_rng(device), torch.no_grad():
        yield collect


def autoattack_settings(
    version: str, norm: str, eps: float, seed: int, n_queries: int, n_classes: int, individual: bool, n: int
) -> dict[str, Any]:
    """The settings of one AutoAttack run, as its results record them."""
    attacks = VERSIONS[version]
    return {
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
        "n_samples": n,
    }


def autoattack_batch(
    model: nn.Module,
    attack: str,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    seed: int,
    n_classes: int,
    n_queries: int = STANDARD_QUERIES,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One attack of AutoAttack on one batch, as :func:`run_autoattack_report` runs each batch of its cascade:
    ``(x_adv, fooled bool [N], warnings of AutoAttack's checks)``.

    Every image of ``x`` is attacked, as one batch: pass the images still robust, at most the cascade's batch
    size at a time. Each batch reseeds the attack, so the cascade's result is rebuilt exactly from its batches
    run in any order, in any process (:func:`akd_edge.verify.transfer.transfer_job` does).
    """
    check_args(norm, eps, "standard", n_queries, max(len(x), 1))
    device = _device_of(model, None)
    x, y = x.detach().to(device).float(), y.detach().to(device).long()
    with _attacking(model, device) as collect:
        adversary = _build(model, norm, eps, seed, n_queries, n_classes, device)
        x_adv, fooled = _attack_subset(adversary, attack, x, y, len(x))
    return x_adv.detach(), fooled.cpu(), collect.messages


@dataclass
class SquareResult:
    """What one :func:`run_square` run produced, on the device of its inputs."""

    x_adv: torch.Tensor
    """float32 [N, C, H, W]: Square's example where it fooled the model, else the clean input."""
    clean: torch.Tensor
    """bool [N]: classified correctly without attack."""
    robust: torch.Tensor
    """bool [N]: classified correctly at ``x_adv`` (so False wherever ``clean`` is)."""
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class _Predict:
    """The caller's ``predict`` as ``SquareAttack`` needs it, with the model calls counted for progress.

    Its logits come back as a fresh float tensor on the inputs' device (the attack writes into them) with
    their shape checked; an empty batch (queried when every margin is already <= 0) is answered without a call.
    """

    def __init__(self, predict: PredictFn) -> None:
        self.predict = predict
        self.n_classes = 0
        self.calls = 0
        self.on_call: Callable[[], None] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 0:
            return torch.zeros((0, self.n_classes), device=x.device)
        logits = torch.as_tensor(self.predict(x)).detach().to(device=x.device, dtype=torch.float32).clone()
        if logits.ndim != 2 or len(logits) != len(x) or logits.shape[1] < 2:
            raise UsageError(f"predict must return logits [N, classes >= 2] for N images, got {tuple(logits.shape)}")
        self.n_classes = logits.shape[1]
        self.calls += 1
        if self.on_call is not None:
            self.on_call()
        return logits


def _check_square_args(loss: str, p_init: float, n_restarts: int, x: torch.Tensor, y: torch.Tensor) -> None:
    if loss not in SQUARE_LOSSES:
        raise UsageError(f"Square loss {loss!r} is not supported; use one of {', '.join(SQUARE_LOSSES)}")
    if not 0 < p_init <= 1 or n_restarts < 1:
        raise UsageError(f"Square needs 0 < p_init <= 1 and n_restarts >= 1, got {p_init} and {n_restarts}")
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise UsageError(f"Square needs images [N, C, H, W] and N labels, got {tuple(x.shape)} and {tuple(y.shape)}")


def run_square(
    predict: PredictFn,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "linf",
    n_queries: int = 1000,
    p_init: float = 0.8,
    seed: int = 0,
    loss: str = "margin",
    rescale_schedule: bool = True,
    n_restarts: int = 1,
    batch_size: int = 256,
    progress: SquareProgressFn | None = None,
) -> SquareResult:
    """The official Square attack (``pyautoattack``'s ``SquareAttack``), untargeted, on any ``predict``.

    ``predict`` maps images in [0, 1] to logits; it needs no gradients and need not be a module (an
    onnxruntime session wrapped as a tensor-to-tensor function will do). Samples misclassified without
    attack are left alone. The images go through in batches of ``batch_size``, each attacked with the same
    ``seed``, as AutoAttack's ``run_standard_evaluation`` does: beyond the inputs and the results, memory
    depends on the batch, not on ``len(x)``, and a batch's result does not depend on the others (attacking
    ``x[256:512]`` alone gives the same examples as the second batch of ``x``). ``rescale_schedule`` stretches
    the schedule of square sizes (tuned for 10000 queries) over ``n_queries``; AutoAttack's ``standard`` runs
    5000 queries without it. The random numbers come from a generator of the attack's own, seeded as
    ``perturb`` seeds torch's (:mod:`akd_edge.attacks.seeded_square`): the examples are those of ``SquareAttack.perturb``, and
    torch's global RNG is never read or changed, so attacks may run on several threads at once. Per-sample
    query counts are not reported: ``perturb`` does not return them.
    """
    import pyautoattack

    from akd_edge.attacks.pgd import check_unit_range
    from akd_edge.attacks.seeded_square import perturb, square_class

    check_args(norm, eps, "square", n_queries, batch_size)
    _check_square_args(loss, p_init, n_restarts, x, y)
    x = x.detach().float()
    y = y.detach().long().to(x.device)
    check_unit_range(x)
    start = time.perf_counter()
    model = _Predict(predict)
    attack = square_class()(
        model,
        norm=AUTOATTACK_NORMS[norm],
        n_queries=n_queries,
        eps=eps,
        p_init=p_init,
        n_restarts=n_restarts,
        seed=seed,
        verbose=False,
        loss=loss,
        resc_schedule=rescale_schedule,
        device=x.device,
    )
    x_adv = x.clone()
    clean = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    robust = clean.clone()
    total = math.ceil(len(x) / batch_size) * n_queries
    with torch.no_grad(), _quiet():
        for batch, lo in enumerate(range(0, len(x), batch_size)):
            xb, yb = x[lo : lo + batch_size], y[lo : lo + batch_size]
            correct = model(xb).max(1)[1] == yb
            clean[lo : lo + len(xb)] = correct
            if correct.any():
                if progress is not None:  # the attack: one call for the start, one per iteration
                    done, first = batch * n_queries, model.calls + 1
                    model.on_call = lambda done=done, first=first: progress(
                        done + min(max(model.calls - first, 0), n_queries), total
                    )
                x_adv[lo : lo + len(xb)] = perturb(attack, xb, yb, correct)
                model.on_call = None
                robust[lo : lo + len(xb)] = correct & (model(x_adv[lo : lo + len(xb)]).argmax(1) == yb)
            if progress is not None:
                progress((batch + 1) * n_queries, total)
    log.debug("square %s eps=%g: robust %d/%d", norm, eps, int(robust.sum()), len(x))
    settings = {
        "attack": "square",
        "implementation": f"pyautoattack {pyautoattack.__version__} SquareAttack (random numbers from its own generator)",
        "norm": norm,
        "eps": eps,
        "n_queries": n_queries,
        "p_init": p_init,
        "loss": loss,
        "rescale_schedule": rescale_schedule,
        "restarts": n_restarts,
        "seed": seed,
        "batch_size": batch_size,
        "n_samples": len(x),
    }
    return SquareResult(x_adv, clean, robust, settings, time.perf_counter() - start)
