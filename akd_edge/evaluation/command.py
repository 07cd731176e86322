"""``akd-edge eval``: a checkpoint's robustness evaluation, written to ``eval.json`` (and PNG plots).

The numbers come from the one evaluation engine (:mod:`akd_edge.evaluation.engine`); this module loads the
checkpoint and its test split, resolves the threat model, and writes the report: every number with the
settings that produced it (norm, epsilon, steps, restarts, queries, seed, number of samples), the sanity
checks and the package versions. The output folder is checked for writability before any attack runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from akd_edge.attacks.suite import AttackSpec, parse_attacks
from akd_edge.core.env import package_versions
from akd_edge.core.errors import CheckpointError, DataError, UsageError
from akd_edge.core.files import check_own_outputs, output_folder, write_json_atomic
from akd_edge.core.interval import REPORTED_N
from akd_edge.evaluation.engine import Progress, evaluate_model
from akd_edge.metrics.robust import eps_grid

if TYPE_CHECKING:
    from akd_edge.data import ImageDataset

log = logging.getLogger(__name__)

EVAL_FORMAT = "akd-edge-eval/1"
"""``format`` of eval.json."""


@dataclass(frozen=True)
class EvalOptions:
    """What ``akd-edge eval`` measures; defaults fit a 2-core CPU (1000 images, clean + PGD-20).

    Every accuracy in the report carries its 95% Wilson interval (``ci95``); ``n`` defaults to
    :data:`~akd_edge.core.interval.REPORTED_N` images because fewer leave robust accuracy too noisy to compare.
    """

    attacks: tuple[str, ...] = ("pgd",)
    """``pgd``, ``aa-fast``, ``aa-standard``, ``square``; clean accuracy is always measured."""
    norm: str | None = None
    """Threat-model norm; None takes the checkpoint's."""
    eps: float | None = None
    """Threat-model radius; None takes the checkpoint's."""
    n: int = REPORTED_N
    """Test images (the first n; 0 = all; a smaller test split is used whole)."""
    batch_size: int = 250
    steps: int = AttackSpec.steps
    """PGD steps; this and the attack settings below default to :class:`~akd_edge.attacks.suite.AttackSpec`'s."""
    restarts: int = AttackSpec.restarts
    step_size: float = AttackSpec.step_size
    n_queries: int = AttackSpec.n_queries
    seed: int = AttackSpec.seed
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
    factory: str | None = None
    """``package.module:factory`` of a checkpoint of the user's own architecture (importing runs its code)."""

    def __post_init__(self) -> None:
        if self.n < 0 or self.batch_size < 1:
            raise UsageError("--n must be >= 0 (0 = the whole test split) and --batch-size >= 1")
        object.__setattr__(self, "attacks", tuple(parse_attacks(self.attacks)))
        attack_specs(self, "linf", 0.0)  # steps, restarts, queries and step size checked before any work


PLOT_FILES = ("eps_curve.png", "reliability.png")
"""The plots ``eval`` may write beside eval.json (names fixed here)."""


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


def load_eval_data(meta: dict[str, Any], options: EvalOptions) -> tuple[Any, dict[str, Any]]:
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


def _plots(report: dict[str, Any], out_dir: Path, label: str) -> dict[str, Any]:
    from akd_edge.evaluation import plots

    if not plots.matplotlib_available():
        log.warning(plots.MISSING)
        return {"note": plots.MISSING}
    written: dict[str, Any] = {}
    results = report["results"]
    if "eps_curve" in results:
        title = f"{label} ({report['threat']['norm']}, PGD-{results['eps_curve']['settings']['steps']})"
        written["eps_curve"] = plots.plot_eps_curve(
            {label: results["eps_curve"]["points"]}, out_dir / "eps_curve.png", title, [report["threat"]["eps"]]
        ).name
    if "calibration" in results:
        diagrams = {"clean": results["calibration"]["clean"]}
        if "adversarial" in results["calibration"]:
            diagrams["adversarial"] = results["calibration"]["adversarial"]
        written["reliability"] = plots.plot_reliability(diagrams, out_dir / "reliability.png").name
    return written


def attack_specs(options: EvalOptions, norm: str, eps: float) -> tuple[list[AttackSpec], AttackSpec]:
    """The attacks ``options`` asks for at the threat model (norm, eps), and the PGD spec of the eps curve."""
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
    return [replace(base, name=name) for name in options.attacks], base


class EvalResults(dict):
    """The ``results`` of an evaluation, as eval.json holds them (a dict), with the whole record when a run or
    checkpoint was evaluated (``report``: eval.json's contents) and the path of eval.json when it was written."""

    def __init__(self, results: dict[str, Any], report: dict[str, Any] | None = None, path: Path | None = None):
        super().__init__(results)
        self.report = report
        self.path = path


def evaluate(
    source: str | Path,
    options: EvalOptions | None = None,
    *,
    out_dir: str | Path | None = None,
    progress: Progress | None = None,
    write: bool = True,
) -> tuple[dict[str, Any], Path | None]:
    """Evaluate a run directory or checkpoint on its test split; write ``eval.json`` (+ PNG plots).

    Returns the report and the path of ``eval.json`` (None with ``write=False``: the report is only returned).
    An output folder that cannot be written, that another process uses (a run still training) or that holds an
    eval.json or plot akd-edge did not write fails before any attack runs, and ``eval.json`` is written
    atomically.
    """
    from akd_edge.models.checkpoint import load_model

    options = options or EvalOptions()
    started = time.perf_counter()
    model, meta = load_model(source, options.which, options.device, options.factory)
    if not write:
        return _report(model, meta, source, options, progress), None
    with output_folder(out_dir, default_out_dir(source), "eval.json", EVAL_FORMAT, PLOT_FILES) as out:
        report = _report(model, meta, source, options, progress)
        check_own_outputs(
            out, "eval.json", EVAL_FORMAT, PLOT_FILES
        )  # again: the user may have put a file there meanwhile
        report["plots"] = _plots(report, out, meta["arch"]["name"]) if options.plots else {}
        report["seconds"] = time.perf_counter() - started
        path = write_json_atomic(out / "eval.json", report)
        log.debug("wrote %s", path)  # the caller says what it wrote, plots included
        return report, path


def results_on(
    model: torch.nn.Module,
    dataset: ImageDataset,
    options: EvalOptions,
    norm: str,
    eps: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The ``results`` of eval.json: ``model`` (on ``options.device``) on the first ``options.n`` images of
    ``dataset``, against the attacks ``options`` asks for at the threat model (``norm``, ``eps``)."""
    import numpy as np

    from akd_edge.data import iterate_batches

    if options.n and len(dataset) > options.n:
        dataset = dataset.subset(np.arange(options.n))
    specs, base = attack_specs(options, norm, eps)
    return evaluate_model(
        model,
        iterate_batches(dataset, options.batch_size, device=options.device),
        specs,
        total=len(dataset),
        curve=eps_grid(options.eps_curve) if options.eps_curve else [],
        curve_spec=base,
        calibration=options.calibration,
        checks=options.checks,
        check_samples=options.check_samples,
        progress=progress,
    )


def _report(
    model: torch.nn.Module,
    meta: dict[str, Any],
    source: str | Path,
    options: EvalOptions,
    progress: Progress | None,
) -> dict[str, Any]:
    """The record of a checkpoint's evaluation (eval.json but its plots and time): every number with its
    settings, the data, the threat model, the versions and the machine."""
    norm, eps = resolve_threat(meta, options.norm, options.eps)
    dataset, data_meta = load_eval_data(meta, options)
    log.info(
        "evaluating %s on %d %s test images: %s at %s eps %.4g",
        meta["path"],
        len(dataset),
        data_meta["name"],
        ", ".join(["clean", *options.attacks]),
        norm,
        eps,
    )
    results = results_on(model, dataset, options, norm, eps, progress)
    return {
        "format": EVAL_FORMAT,
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
