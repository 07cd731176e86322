"""The one evaluation engine: stream batches through clean evaluation and a list of attacks.

Validation (early stopping), ``akd-edge eval`` and ``akd-edge compress`` all measure robust accuracy
here. One pass over the data: per batch, clean predictions, every attack asked for, the epsilon curve
and the calibration meters; only per-sample flags (a few bytes each) are kept, so memory stays flat
whatever the size of the test set. The result holds every accuracy with the settings that produced it,
the sanity checks, and the per-sample flags themselves.

Inside :func:`sharded` (a data-parallel run), every pass splits its batches across the ranks: rank ``r`` measures
batches ``r, r + world, ...`` under their global batch numbers (which seed PGD's and AutoAttack's random starts),
then the ranks exchange their per-batch results and each one folds them in batch order. The result is the
single-process result (calibration sums included, bit for bit), except the seconds: each attack's is the
longest time one rank spent on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from akd_edge.attacks.suite import AttackSpec, EvalAttack, predict
from akd_edge.core.errors import DataError, UsageError
from akd_edge.evaluation.checks import CheckResult, check_gradient_masking, run_model_checks
from akd_edge.metrics.calibration import CalibrationMeter
from akd_edge.metrics.robust import accuracy, eps_curve_flags

if TYPE_CHECKING:
    from akd_edge.core.distributed import Group
    from akd_edge.data import ImageDataset

log = logging.getLogger(__name__)

Progress = Callable[[int, int | None, str], None]
"""``progress(samples_done, samples_total, info)``, called after each batch."""

_SHARDS: contextvars.ContextVar[Group | None] = contextvars.ContextVar("akd_edge_eval_shards", default=None)


@contextlib.contextmanager
def sharded(group: Group | None) -> Iterator[None]:
    """Every evaluation pass in the block splits its batches across the ranks of ``group`` (None: no split).

    Every rank must run the same passes on the same batches; each gets the whole result.
    """
    token = _SHARDS.set(group if group is not None and group.world > 1 else None)
    try:
        yield
    finally:
        _SHARDS.reset(token)


@dataclass
class Evaluation:
    """What one pass measured: the report's numbers and the per-sample flags behind them."""

    results: dict[str, Any]
    """Accuracies (each with its count, n and 95% Wilson interval ``ci95``, and the attack settings), worst
    case, checks, calibration, eps curve."""
    flags: dict[str, torch.Tensor]
    """bool [N] per sample: ``clean``, each attack's name, and ``worst_case`` (correct and never fooled)."""

    def acc(self, name: str) -> float | None:
        """Accuracy of ``clean``, an attack or ``worst_case``."""
        if name == "clean":
            return self.results["clean"]["acc"]
        if name == "worst_case":
            return self.results["worst_case"]["acc"]
        return self.results["attacks"][name]["acc"]


@dataclass
class _Stream:
    """Per-sample flags and meters accumulated batch by batch."""

    clean: list[torch.Tensor] = field(default_factory=list)
    attacks: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    parts: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)
    curve: list[list[torch.Tensor]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    cal_clean: CalibrationMeter = field(default_factory=CalibrationMeter)
    cal_adv: CalibrationMeter = field(default_factory=CalibrationMeter)
    warnings: list[str] = field(default_factory=list)


def _cat(flags: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def _attack_batch(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, specs: Sequence[EvalAttack], batch: int, stream: _Stream
) -> torch.Tensor | None:
    """Run every attack on one batch; returns the worst-case inputs used for adversarial calibration."""
    x_cal: torch.Tensor | None = None
    fooled = torch.zeros(len(x), dtype=torch.bool)
    for spec in specs:
        start = time.perf_counter()
        outcome = spec.run(model, x, y, batch)
        stream.seconds[spec.name] = stream.seconds.get(spec.name, 0.0) + time.perf_counter() - start
        stream.attacks.setdefault(spec.name, []).append(outcome.robust)
        for part, flags in outcome.parts.items():
            stream.parts.setdefault(spec.name, {}).setdefault(part, []).append(flags)
        for message in outcome.warnings:
            if message not in stream.warnings:
                stream.warnings.append(message)
        # The first attack's example for every sample (PGD's is perturbed even when it fails), replaced
        # by a later attack's where only that one fooled the model.
        newly = ~outcome.robust & ~fooled
        if x_cal is None:
            x_cal = outcome.x_adv.clone()
        else:
            x_cal[newly.to(x.device)] = outcome.x_adv[newly.to(x.device)]
        fooled |= ~outcome.robust
    return x_cal


def evaluate_batches(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    specs: Sequence[EvalAttack],
    *,
    total: int | None = None,
    curve: Sequence[float] = (),
    curve_spec: AttackSpec | None = None,
    calibration: bool = True,
    checks: bool = True,
    check_samples: int = 64,
    progress: Progress | None = None,
) -> Evaluation:
    """Stream ``(x, y, ...)`` batches (images in [0, 1]) through clean evaluation, ``specs`` and the eps curve.

    ``curve`` (sorted epsilons) is measured with ``curve_spec`` at each epsilon; ``checks`` runs the model
    checks on the first ``check_samples`` images; the model's train/eval mode is left as it was.
    """
    if curve and curve_spec is None:
        raise ValueError("an eps curve needs the attack that measures it (curve_spec)")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise UsageError(f"attack names must be distinct (each one is a column of the results), got {names}")
    group = _SHARDS.get()
    if group is not None:
        stream, model_checks = _sharded_pass(
            model, batches, specs, group, total, curve, curve_spec, calibration, checks, check_samples, progress
        )
    else:
        stream, model_checks = _Stream(curve=[[] for _ in curve]), []
        done = 0
        for batch, (x, y, *_) in enumerate(batches):
            if batch == 0 and checks:
                model_checks = run_model_checks(model, x[:check_samples], y[:check_samples])
            _measure_batch(model, x, y, batch, specs, stream, curve, curve_spec, calibration)
            done += len(y)
            if progress is not None:
                progress(done, total, _progress_info(stream))
    if not stream.clean:
        raise DataError("the dataset is empty: nothing to evaluate")
    return _results(stream, specs, curve, curve_spec, calibration, model_checks)


def _measure_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    specs: Sequence[EvalAttack],
    stream: _Stream,
    curve: Sequence[float],
    curve_spec: AttackSpec | None,
    calibration: bool,
) -> None:
    """Clean predictions, every attack and the eps curve of batch number ``batch``, added to ``stream``."""
    logits = predict(model, x)
    stream.clean.append((logits.argmax(1) == y).cpu())
    if calibration:
        stream.cal_clean.update(logits, y)
    x_cal = _attack_batch(model, x, y, specs, batch, stream)
    if calibration and x_cal is not None:
        stream.cal_adv.update(predict(model, x_cal), y)
    if curve:
        start = time.perf_counter()
        for flags, acc in zip(stream.curve, eps_curve_flags(model, x, y, curve_spec, curve, batch), strict=True):
            flags.append(acc)
        stream.seconds["eps_curve"] = stream.seconds.get("eps_curve", 0.0) + time.perf_counter() - start


def _progress_info(stream: _Stream) -> str:
    return " ".join(
        f"{name} {100 * float(_cat(f).float().mean()):.1f}%"
        for name, f in [("clean", stream.clean), *stream.attacks.items()]
    )


def _sharded_pass(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, ...]],
    specs: Sequence[EvalAttack],
    group: Group,
    total: int | None,
    curve: Sequence[float],
    curve_spec: AttackSpec | None,
    calibration: bool,
    checks: bool,
    check_samples: int,
    progress: Progress | None,
) -> tuple[_Stream, list[CheckResult]]:
    """This rank's batches (every ``world``-th), measured one stream per batch, then every rank's folded in order.

    Progress counts the samples of every batch up to the current one, whichever rank measures it (the ranks
    move through the batches at about the same pace).
    """
    mine: list[tuple[int, _Stream]] = []
    model_checks: list[CheckResult] = []
    seen = 0
    for batch, (x, y, *_) in enumerate(batches):
        seen += len(y)
        if batch % group.world != group.rank:
            continue
        if batch == 0 and checks:
            model_checks = run_model_checks(model, x[:check_samples], y[:check_samples])
        part = _Stream(curve=[[] for _ in curve])
        _measure_batch(model, x, y, batch, specs, part, curve, curve_spec, calibration)
        mine.append((batch, part))
        if progress is not None:
            progress(
                seen if total is None else min(seen, total), total, _progress_info(_fold([p for _, p in mine], curve))
            )
    gathered = group.all_gather((mine, model_checks))
    parts = sorted((item for rank_parts, _ in gathered for item in rank_parts), key=lambda item: item[0])
    stream = _fold([part for _, part in parts], curve)
    stream.seconds = {}
    for rank_parts, _ in gathered:  # wall time: the slowest rank's total per attack
        for key, value in _fold([part for _, part in rank_parts], curve).seconds.items():
            stream.seconds[key] = max(stream.seconds.get(key, 0.0), value)
    return stream, gathered[0][1]


def _fold(parts: Sequence[_Stream], curve: Sequence[float]) -> _Stream:
    """One stream from per-batch streams, in the order given (calibration sums added in that order)."""
    out = _Stream(curve=[[] for _ in curve])
    for part in parts:
        out.clean += part.clean
        for name, flags in part.attacks.items():
            out.attacks.setdefault(name, []).extend(flags)
        for name, by_part in part.parts.items():
            for key, flags in by_part.items():
                out.parts.setdefault(name, {}).setdefault(key, []).extend(flags)
        for mine, theirs in zip(out.curve, part.curve, strict=True):
            mine += theirs
        for key, value in part.seconds.items():
            out.seconds[key] = out.seconds.get(key, 0.0) + value
        for total, meter in ((out.cal_clean, part.cal_clean), (out.cal_adv, part.cal_adv)):
            _add_meter(total, meter)
        out.warnings += [m for m in part.warnings if m not in out.warnings]
    return out


def _add_meter(total: CalibrationMeter, part: CalibrationMeter) -> None:
    """Add ``part``'s counts and sums to ``total`` (in the order a single pass would have added them)."""
    total.count += part.count
    total.confidence_sum += part.confidence_sum
    total.correct_sum += part.correct_sum
    total.nll_sum += part.nll_sum
    total.brier_sum += part.brier_sum
    total.n += part.n


def evaluate_dataset(
    model: nn.Module,
    dataset: ImageDataset,
    specs: Sequence[EvalAttack],
    *,
    batch_size: int,
    device: str | torch.device = "cpu",
    **options: Any,
) -> Evaluation:
    """:func:`evaluate_batches` over ``dataset`` in order, ``batch_size`` images at a time on ``device``."""
    from akd_edge.data import iterate_batches

    batches = iterate_batches(dataset, batch_size, device=device)
    return evaluate_batches(model, batches, specs, total=len(dataset), **options)


def evaluate_model(
    model: nn.Module, batches: Iterable[tuple[torch.Tensor, ...]], specs: Sequence[EvalAttack], **options: Any
) -> dict[str, Any]:
    """The ``results`` of :func:`evaluate_batches` (the ``results`` entry of eval.json)."""
    return evaluate_batches(model, batches, specs, **options).results


def _attack_entries(
    stream: _Stream, specs: Sequence[EvalAttack]
) -> tuple[dict[str, Any], dict[str, torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per attack: its accuracy entry and flags; and the white-box and black-box parts' flags."""
    attacks: dict[str, Any] = {}
    flags: dict[str, torch.Tensor] = {}
    white: list[torch.Tensor] = []
    black: list[torch.Tensor] = []
    for spec in specs:
        flags[spec.name] = _cat(stream.attacks[spec.name])
        parts = {part: _cat(f) for part, f in stream.parts.get(spec.name, {}).items()}
        white += [parts[p] for p in spec.white_box if p in parts]
        black += [parts[p] for p in spec.black_box if p in parts]
        entry = {
            **accuracy(flags[spec.name]),
            "settings": spec.settings(),
            "seconds": stream.seconds.get(spec.name, 0.0),
        }
        if len(parts) > 1:
            after = {part: accuracy(f) for part, f in parts.items()}
            entry["after"] = {part: a["acc"] for part, a in after.items()}
            entry["after_ci95"] = {part: a["ci95"] for part, a in after.items()}
        attacks[spec.name] = entry
    return attacks, flags, white, black


def _results(
    stream: _Stream,
    specs: Sequence[EvalAttack],
    curve: Sequence[float],
    curve_spec: AttackSpec | None,
    calibration: bool,
    model_checks: list[CheckResult],
) -> Evaluation:
    clean = _cat(stream.clean)
    attacks, flags, white, black = _attack_entries(stream, specs)
    worst = clean.clone()
    for robust in flags.values():
        worst &= robust
    all_checks = [*model_checks]
    if specs:
        all_checks.append(check_gradient_masking(clean, white, black))
    for check in all_checks[len(model_checks) :]:
        if not check.ok:
            log.warning("sanity check %s: %s", check.name, check.message)
    warnings = [f"{c.name}: {c.message}" for c in all_checks if not c.ok]
    warnings += [f"AutoAttack: {m}" for m in stream.warnings]
    results: dict[str, Any] = {
        "clean": accuracy(clean),
        "attacks": attacks,
        "worst_case": {**accuracy(worst), "over": ["clean", *[s.name for s in specs]]},
        "checks": [c.as_dict() for c in all_checks],
        "warnings": warnings,
        "seconds": dict(stream.seconds),
    }
    if calibration:
        results["calibration"] = {"clean": stream.cal_clean.result()}
        if specs:
            results["calibration"]["adversarial"] = {
                **stream.cal_adv.result(),
                "inputs": f"worst case over {', '.join(s.name for s in specs)}: the fooling example where an attack "
                f"succeeded, else the {specs[0].name} example",
            }
    if curve and curve_spec is not None:
        settings = {k: v for k, v in curve_spec.settings().items() if k != "eps"}
        results["eps_curve"] = {
            "settings": settings,
            "monotone": "a sample fooled at one epsilon counts as fooled at every larger one",
            "points": [{"eps": eps, **accuracy(_cat(f))} for eps, f in zip(curve, stream.curve, strict=True)],
        }
    return Evaluation(results=results, flags={"clean": clean, **flags, "worst_case": worst})
