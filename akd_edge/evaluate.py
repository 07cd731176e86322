"""Robustness evaluation of a checkpoint, streamed in batches, written to ``eval.json``.

One pass over the test split: per batch, clean predictions, every attack asked for, the epsilon curve
and the calibration meters; only per-sample flags (a few bytes each) are kept, so memory stays flat
whatever the size of the test set. The report holds every number with the settings that produced it
(norm, epsilon, steps, restarts, queries, seed, number of samples), the sanity checks and the package
versions. Training-dynamics analysis of one or two runs is :func:`evaluate_dynamics`.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from akd_edge.checks import CheckResult, check_gradient_masking, run_model_checks
from akd_edge.errors import CheckpointError, DataError, UsageError
from akd_edge.metrics.calibration import CalibrationMeter
from akd_edge.metrics.robust import AttackSpec, accuracy, eps_curve_flags, eps_grid, parse_attacks, predict, run_attack

log = logging.getLogger(__name__)

FORMAT = "akd-edge-eval/1"
Progress = Callable[[int, int, str], None]
"""``progress(samples_done, samples_total, info)``, called after each batch."""


@dataclass(frozen=True)
class EvalOptions:
    """What ``akd-edge eval`` measures; defaults fit a 2-core CPU (1000 images, clean + PGD-20)."""

    attacks: tuple[str, ...] = ("pgd",)
    """``pgd``, ``aa-fast``, ``aa-standard``, ``square``; clean accuracy is always measured."""
    norm: str | None = None
    """Threat-model norm; None takes the checkpoint's."""
    eps: float | None = None
    """Threat-model radius; None takes the checkpoint's."""
    n: int = 1000
    """Test images (the first n; 0 = all)."""
    batch_size: int = 250
    steps: int = 20
    restarts: int = 1
    step_size: float = 0.0
    n_queries: int = 5000
    seed: int = 0
    eps_curve: tuple[float, ...] = ()
    """Epsilons of the robust-accuracy curve (PGD with the settings above); empty = no curve."""
    calibration: bool = True
    checks: bool = True
    check_samples: int = 64
    """Images of the first batch the model checks use."""
    plots: bool = True
    data_dir: str | None = None
    """None takes the checkpoint's data_dir."""
    which: str = "best"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.n < 0 or self.batch_size < 1:
            raise UsageError("--n must be >= 0 (0 = the whole test split) and --batch-size >= 1")
        object.__setattr__(self, "attacks", tuple(parse_attacks(self.attacks)))


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
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, specs: Sequence[AttackSpec], batch: int, stream: _Stream
) -> torch.Tensor | None:
    """Run every attack on one batch; returns the worst-case inputs used for adversarial calibration."""
    x_cal: torch.Tensor | None = None
    fooled = torch.zeros(len(x), dtype=torch.bool)
    for spec in specs:
        start = time.perf_counter()
        outcome = run_attack(model, x, y, spec, batch)
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


def evaluate_model(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    specs: Sequence[AttackSpec],
    *,
    total: int,
    curve: Sequence[float] = (),
    curve_spec: AttackSpec | None = None,
    calibration: bool = True,
    checks: bool = True,
    check_samples: int = 64,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Stream ``(x, y)`` batches (images in [0, 1]) through clean evaluation, ``specs`` and the eps curve."""
    stream = _Stream(curve=[[] for _ in curve])
    model_checks: list[CheckResult] = []
    done = 0
    for batch, (x, y, *_) in enumerate(batches):
        if batch == 0 and checks:
            model_checks = run_model_checks(model, x[:check_samples], y[:check_samples])
        logits = predict(model, x)
        stream.clean.append((logits.argmax(1) == y).cpu())
        if calibration:
            stream.cal_clean.update(logits, y)
        x_cal = _attack_batch(model, x, y, specs, batch, stream)
        if calibration and x_cal is not None:
            stream.cal_adv.update(predict(model, x_cal), y)
        if curve:
            assert curve_spec is not None
            start = time.perf_counter()
            for flags, acc in zip(stream.curve, eps_curve_flags(model, x, y, curve_spec, curve, batch), strict=True):
                flags.append(acc)
            stream.seconds["eps_curve"] = stream.seconds.get("eps_curve", 0.0) + time.perf_counter() - start
        done += len(y)
        if progress is not None:
            info = " ".join(
                f"{name} {100 * float(_cat(f).float().mean()):.1f}%"
                for name, f in [("clean", stream.clean), *stream.attacks.items()]
            )
            progress(done, total, info)
    if done == 0:
        raise DataError("the test split is empty: nothing to evaluate")
    return _results(stream, specs, curve, curve_spec, calibration, model_checks)


def _results(
    stream: _Stream,
    specs: Sequence[AttackSpec],
    curve: Sequence[float],
    curve_spec: AttackSpec | None,
    calibration: bool,
    model_checks: list[CheckResult],
) -> dict[str, Any]:
    clean = _cat(stream.clean)
    worst = clean.clone()
    attacks: dict[str, Any] = {}
    white: list[torch.Tensor] = []
    black: list[torch.Tensor] = []
    for spec in specs:
        flags = _cat(stream.attacks[spec.name])
        worst &= flags
        parts = {part: _cat(f) for part, f in stream.parts.get(spec.name, {}).items()}
        white += [parts[p] for p in spec.white_box if p in parts]
        black += [parts[p] for p in spec.black_box if p in parts]
        entry = {**accuracy(flags), "settings": spec.settings(), "seconds": stream.seconds.get(spec.name, 0.0)}
        if len(parts) > 1:
            entry["after"] = {part: accuracy(f)["acc"] for part, f in parts.items()}
        attacks[spec.name] = entry
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
    return results


# ----------------------------------------------------------------------------------------------
# checkpoint + data -> eval.json


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide the numbers (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("akd-edge", "torch", "numpy", "pyautoattack", "matplotlib", "onnxruntime"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def default_out_dir(source: str | Path) -> Path:
    """The run directory, the folder of a checkpoint file, or ``./eval-NAME`` for a builtin checkpoint."""
    text = str(source)
    if text.startswith("builtin:"):
        return Path.cwd() / f"eval-{text.removeprefix('builtin:')}"
    path = Path(source)
    return path if path.is_dir() else path.parent


def resolve_threat(meta: dict[str, Any], norm: str | None, eps: float | None) -> tuple[str, float]:
    """The threat model: ``--norm``/``--eps`` where given, else the checkpoint's."""
    threat = meta.get("threat") or {}
    norm = norm or threat.get("norm")
    eps = eps if eps is not None else threat.get("eps")
    if norm is None or eps is None:
        raise UsageError(f"{meta.get('path', 'the checkpoint')} records no threat model: pass --norm and --eps")
    return str(norm), float(eps)


def _load_data(meta: dict[str, Any], options: EvalOptions) -> tuple[Any, dict[str, Any]]:
    from akd_edge.data import load_test_split

    data = meta.get("data") or {}
    if not data.get("name"):
        raise CheckpointError(f"{meta.get('path')} does not record its dataset (meta['data']['name'])")
    data_dir = options.data_dir if options.data_dir is not None else data.get("data_dir", "")
    dataset, data_meta = load_test_split(data["name"], data_dir or "", n=options.n)
    arch = meta["arch"]
    if tuple(data_meta["input_shape"]) != tuple(arch["input_shape"]):
        raise DataError(
            f"the test images have shape {tuple(data_meta['input_shape'])}, the model takes "
            f"{tuple(arch['input_shape'])}: check --data-dir"
        )
    if int(data_meta["num_classes"]) != int(arch["num_classes"]):
        raise DataError(f"the dataset has {data_meta['num_classes']} classes, the model {arch['num_classes']}")
    return dataset, {**data_meta, "data_dir": data_dir or ""}


def _json_ready(value: Any) -> Any:
    """NaN/inf become None (JSON has no NaN); tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def write_json(obj: dict[str, Any], path: Path) -> Path:
    """Write JSON atomically (a temp file and a rename), so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(_json_ready(obj), fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _plots(report: dict[str, Any], out_dir: Path, label: str) -> dict[str, Any]:
    from akd_edge import plots

    if not plots.matplotlib_available():
        log.warning(plots.MISSING)
        return {"note": plots.MISSING}
    written: dict[str, Any] = {}
    results = report["results"]
    if "eps_curve" in results:
        title = f"{label} ({report['threat']['norm']}, PGD-{results['eps_curve']['settings']['steps']})"
        written["eps_curve"] = plots.plot_eps_curve(
            {label: results["eps_curve"]["points"]}, out_dir / "eps_curve.png", title
        ).name
    if "calibration" in results:
        diagrams = {"clean": results["calibration"]["clean"]}
        if "adversarial" in results["calibration"]:
            diagrams["adversarial"] = results["calibration"]["adversarial"]
        written["reliability"] = plots.plot_reliability(diagrams, out_dir / "reliability.png").name
    return written


def evaluate(
    source: str | Path,
    options: EvalOptions | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, Any], Path]:
    """Evaluate a run directory or checkpoint on its test split; write ``eval.json`` (+ PNG plots).

    Returns the report and the path of ``eval.json``.
    """
    from akd_edge.data import iterate_batches
    from akd_edge.train.checkpoint import load_model

    options = options or EvalOptions()
    started = time.perf_counter()
    model, meta = load_model(source, options.which, options.device)
    norm, eps = resolve_threat(meta, options.norm, options.eps)
    dataset, data_meta = _load_data(meta, options)
    base = AttackSpec(
        "pgd",
        norm=norm,
        eps=eps,
        steps=options.steps,
        restarts=options.restarts,
        step_size=options.step_size,
        n_queries=options.n_queries,
        seed=options.seed,
    )
    specs = [replace(base, name=name) for name in options.attacks]
    curve = eps_grid(options.eps_curve) if options.eps_curve else []
    batches = iterate_batches(dataset, options.batch_size, device=options.device)
    log.info(
        "evaluating %s on %d %s test images: %s at %s eps %.4g",
        meta["path"],
        len(dataset),
        data_meta["name"],
        ", ".join(["clean", *options.attacks]),
        norm,
        eps,
    )
    results = evaluate_model(
        model,
        batches,
        specs,
        total=len(dataset),
        curve=curve,
        curve_spec=base,
        calibration=options.calibration,
        checks=options.checks,
        check_samples=options.check_samples,
        progress=progress,
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(source)
    report: dict[str, Any] = {
        "format": FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "source": str(source),
        "checkpoint": {key: meta.get(key) for key in ("path", "role", "epoch", "threat", "val")}
        | {"arch": meta["arch"]["name"], "which": options.which},
        "data": {
            "name": data_meta["name"],
            "split": "test",
            "n_samples": len(dataset),
            "data_dir": data_meta["data_dir"],
        },
        "threat": {"norm": norm, "eps": eps},
        "options": {k: v for k, v in asdict(options).items() if k not in ("plots",)},
        "results": results,
        "versions": package_versions(),
        "environment": {
            "device": str(options.device),
            "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor() or None,
        },
    }
    report["plots"] = _plots(report, out, meta["arch"]["name"]) if options.plots else {}
    report["seconds"] = time.perf_counter() - started
    path = write_json(report, out / "eval.json")
    log.info("wrote %s", path)
    return report, path


# ----------------------------------------------------------------------------------------------
# training dynamics


def evaluate_dynamics(
    runs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    late_fraction: float = 0.25,
    min_forgets: int = 2,
    plots: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Analyse the ``dynamics.npz`` of one run, or compare two (for example AT and AKD) set by set.

    Writes ``dynamics.json`` (and ``dynamics.png``) into ``out_dir`` (default: the first run directory),
    and ``dynamics_samples.npz``: per run and training sample, the learned epoch, the forgetting events and
    the set masks (keys ``RUN/RECORD/...``), in the order of the training split.
    """
    import numpy as np

    from akd_edge.metrics.dynamics import analyze, compare, load_dynamics, per_sample

    if len(runs) not in (1, 2):
        raise UsageError(f"--dynamics takes one run (analysis) or two runs (comparison), got {len(runs)}")
    records = [load_dynamics(run) for run in runs]
    labels = list(names) if names else [Path(run).resolve().name or str(run) for run in runs]
    if len(set(labels)) != len(labels):
        labels = [f"{label}-{i + 1}" for i, label in enumerate(labels)]
    if len(records) == 2:
        report = compare(
            records[0], records[1], names=(labels[0], labels[1]), late_fraction=late_fraction, min_forgets=min_forgets
        )
    else:
        report = {
            "names": labels,
            "summaries": {labels[0]: analyze(records[0], late_fraction=late_fraction, min_forgets=min_forgets)},
        }
    report = {"format": "akd-edge-dynamics/1", "runs": [str(r) for r in runs], **report, "versions": package_versions()}
    first = Path(runs[0])
    out = Path(out_dir) if out_dir is not None else (first if first.is_dir() else first.parent)
    if plots:
        from akd_edge import plots as plotting

        if plotting.matplotlib_available():
            report["plots"] = {"dynamics": plotting.plot_dynamics(report, out / "dynamics.png").name}
        else:
            log.warning(plotting.MISSING)
            report["plots"] = {"note": plotting.MISSING}
    arrays = {
        f"{label}/{key}": value
        for label, record in zip(labels, records, strict=True)
        for key, value in per_sample(record, late_fraction=late_fraction, min_forgets=min_forgets).items()
    }
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "dynamics_samples.npz", **arrays)
    report["samples"] = "dynamics_samples.npz"
    path = write_json(report, out / "dynamics.json")
    return report, path
