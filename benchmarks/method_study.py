#!/usr/bin/env python
"""A resumable study: a grid of training runs (variant x seed), each evaluated with the one evaluation engine.

    python benchmarks/method_study.py run benchmarks/studies/fmnist-screen.toml [--jobs N] [--only at,akd-a09]
        [--seeds 0,1] [--eval-only] [--retrain] [--dry-run] [--attacks pgd,aa-fast] [--n 1000] [--eval-batch 1000] [--set KEY=VALUE ...]
    python benchmarks/method_study.py report fmnist-screen            # markdown table + robust-vs-clean plot

A study spec (TOML, ``benchmarks/studies/NAME.toml``) names a base recipe, overrides for every cell, the
seeds, the evaluation, and a list of variants, each a list of ``--set``-style overrides (``{seed}`` in one is
the cell's seed). Every cell is an
ordinary run directory, ``<runs>/<study>/<variant>/seed<k>/`` (default ``runs/studies``), trained by
:func:`akd_edge.train.loop.train_run`; so a killed study resumes: a cell with ``summary.json`` is finished
(its recipe is checked against the spec), one with ``last.pt`` continues, one killed before its first
checkpoint starts again, a missing one starts. A cell whose run directory is gone (a fresh checkout) but
whose results are complete is kept; ``--retrain`` trains it again, to evaluate it with other attacks. A finished cell is evaluated on the test split by
:func:`akd_edge.evaluate` (clean and the attacks asked for, every figure with its settings and n) unless
the results file already holds its figures for the same training run and evaluation settings.

Results go to ``benchmarks/results/<study>.json``, one entry per cell, merged into what is there under a
lock and written atomically after every cell, so partial results survive and can be committed. Cells run
in ``--jobs`` processes (default: the cores this process may use), each with one torch thread.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import tomllib
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STUDIES_DIR = ROOT / "benchmarks" / "studies"
RESULTS_DIR = ROOT / "benchmarks" / "results"
FORMAT = "akd-edge-study/1"
EVAL_DEFAULTS: dict[str, Any] = {"attacks": ["pgd"], "n": 1000, "steps": 20, "restarts": 1, "seed": 0, "which": "best"}
"""Screening evaluation: clean and PGD-20 on the first 1000 test images, the early-stopped checkpoint."""
SPEC_KEYS = {"description", "recipe", "set", "seeds", "out_dir", "eval", "variants"}
VARIANT_KEYS = {"name", "description", "set"}

log = logging.getLogger("method_study")


# ----------------------------------------------------------------------------------------------
# the spec


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: list[str]
    description: str = ""


@dataclass(frozen=True)
class Study:
    """A parsed study spec."""

    name: str
    path: Path
    recipe: str
    overrides: list[str]
    seeds: list[int]
    variants: list[Variant]
    eval: dict[str, Any]
    out_dir: str = "runs/studies"
    description: str = ""


@dataclass(frozen=True)
class Cell:
    variant: Variant
    seed: int
    run_dir: Path
    overrides: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.variant.name}/seed{self.seed}"


def _unknown(keys: Sequence[str], allowed: set[str], where: str) -> None:
    extra = sorted(set(keys) - allowed)
    if extra:
        raise SystemExit(f"{where}: unknown key(s) {extra}; allowed: {', '.join(sorted(allowed))}")


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SystemExit(f"{where}: expected a list of 'section.key=value' strings")
    return list(value)


def resolve_spec_path(study: str | Path) -> Path:
    """A spec path as given, or the name of a spec in ``benchmarks/studies/``."""
    path = Path(study)
    if path.is_file():
        return path
    named = STUDIES_DIR / f"{path.stem}.toml"
    if named.is_file():
        return named
    raise SystemExit(f"study {study}: no such file, and no {named}")


def load_study(study: str | Path) -> Study:
    """Read and check a study spec (unknown keys and duplicate or unsafe variant names are errors)."""
    from akd_edge.core.files import check_name

    path = resolve_spec_path(study)
    data = tomllib.loads(path.read_text())
    _unknown(list(data), SPEC_KEYS, str(path))
    if "recipe" not in data or not data.get("variants"):
        raise SystemExit(f"{path}: a study needs recipe = ... and at least one [[variants]]")
    variants = []
    for i, raw in enumerate(data["variants"]):
        where = f"{path}: variants[{i}]"
        _unknown(list(raw), VARIANT_KEYS, where)
        name = check_name(raw.get("name"), f"{where}.name")
        variants.append(Variant(name, _strings(raw.get("set", []), f"{where}.set"), raw.get("description", "")))
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"{path}: variant names repeat: {names}")
    evaluation = dict(data.get("eval", {}))
    _unknown(list(evaluation), set(EVAL_DEFAULTS) | {"eps", "norm"}, f"{path}: [eval]")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise SystemExit(f"{path}: seeds must be a list of integers >= 0")
    return Study(
        name=check_name(path.stem, "study name"),
        path=path,
        recipe=str(data["recipe"]),
        overrides=_strings(data.get("set", []), f"{path}: set"),
        seeds=seeds,
        variants=variants,
        eval={**EVAL_DEFAULTS, **evaluation},
        out_dir=str(data.get("out_dir", "runs/studies")),
        description=str(data.get("description", "")),
    )


def cells_of(study: Study, runs: Path, only: list[str], seeds: list[int], extra: list[str]) -> list[Cell]:
    """The cells to visit, variant-major (so the first seed of every variant finishes early)."""
    known = [v.name for v in study.variants]
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise SystemExit(f"--only: no variant(s) {unknown} in {study.path}; variants: {', '.join(known)}")
    variants = [v for v in study.variants if not only or v.name in only]
    return [
        Cell(
            v,
            seed,
            runs / study.name / v.name / f"seed{seed}",
            _with_seed([*study.overrides, *v.overrides, *extra], seed),
        )
        for seed in (seeds or study.seeds)
        for v in variants
    ]


def _with_seed(overrides: list[str], seed: int) -> list[str]:
    """``{seed}`` in an override is the cell's seed (e.g. a teacher trained on the same seed's labels)."""
    return [o.replace("{seed}", str(seed)) for o in overrides]


def recipe_overrides(study: Study, cell: Cell, device: str) -> list[str]:
    """Everything set on a cell's recipe: spec, variant, command line, then its seed, name and device."""
    name = f"{study.name}-{cell.variant.name}-seed{cell.seed}"
    tail = [f"run.seed={cell.seed}", f'run.name="{name}"']
    return [*cell.overrides, *tail, *([f'run.device="{device}"'] if device else [])]


# ----------------------------------------------------------------------------------------------
# one cell (runs in a worker process, one torch thread)


def check_recipe(recipe: Any, run_dir: Path) -> None:
    """Refuse a finished run directory whose recipe is not the cell's (a stale run from another spec)."""
    from akd_edge.config import read_toml, to_dict
    from akd_edge.train.rundir import recipe_changes

    changed = recipe_changes(read_toml(run_dir / "recipe.toml"), to_dict(recipe))
    if changed:
        raise SystemExit(
            f"{run_dir} is a finished run of a different recipe ({', '.join(changed)} differ): move it away "
            "or give this study another --runs folder"
        )


def _train_cell(recipe: Any, run_dir: Path) -> str:
    """Train, continue or accept a cell's run directory; returns what was done."""
    from akd_edge.core.files import in_use, marked_kind
    from akd_edge.train.loop import train_run

    if (run_dir / "summary.json").is_file():
        check_recipe(recipe, run_dir)
        return "finished"
    if (run_dir / "last.pt").is_file():
        train_run(recipe, run_dir, resume=True)
        return "resumed"
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if marked_kind(run_dir) != "run" or in_use(run_dir):
            raise SystemExit(f"{run_dir} holds files that are not a stopped akd-edge run; not touching it")
        log.info("%s was killed before its first checkpoint: starting it again", run_dir)
        shutil.rmtree(run_dir)
    train_run(recipe, run_dir)
    return "trained"


def _evaluate_cell(run_dir: Path, settings: dict[str, Any], device: str) -> dict[str, Any]:
    import akd_edge as ae

    started = time.perf_counter()
    opts = {k: v for k, v in settings.items() if k not in ("attacks", "eps", "norm")}
    results = ae.evaluate(
        run_dir,
        attacks=settings["attacks"],
        eps=settings.get("eps"),
        norm=settings.get("norm"),
        device=device or "cpu",
        threads=1,
        calibration=False,
        **opts,
    )
    return {
        "settings": settings,
        "n": results["clean"]["n"],
        "clean": results["clean"]["acc"],
        "attacks": {name: {"acc": a["acc"], "settings": a["settings"]} for name, a in results["attacks"].items()},
        "robust": results["worst_case"]["acc"],
        "robust_over": results["worst_case"]["over"],
        "warnings": results["warnings"],
        "seconds": round(time.perf_counter() - started, 1),
        "evaluated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _train_info(run_dir: Path) -> dict[str, Any]:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "method": summary["method"],
        "model": summary["model"],
        "params": summary["params"],
        "epochs": summary["epochs"],
        "best_epoch": summary["best"].get("epoch"),
        "val_best": summary["best"],
        "train_attack": summary.get("train_attack"),
        "train_time_s": round(summary["train_time_s"], 1),
        "val_time_s": round(summary["val_time_s"], 1),
        "images_per_s": summary.get("images_per_s"),
        "speed": summary.get("speed"),
        "summary_mtime_ns": (run_dir / "summary.json").stat().st_mtime_ns,
    }


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    """Train (if needed) and evaluate (if needed) one cell; returns its results entry. Never raises."""
    from akd_edge.config import load_recipe
    from akd_edge.core.env import torch_threads

    run_dir = Path(task["run_dir"])
    entry: dict[str, Any] = {
        "variant": task["variant"],
        "seed": task["seed"],
        "run_dir": str(run_dir),
        "recipe": task["recipe"],
        "overrides": task["overrides"],
    }
    try:
        with torch_threads(1):
            recipe = load_recipe(task["recipe"], task["overrides"])
            if _finished_elsewhere(task):
                return {**task["previous"], "action": "kept"}
            if task["eval_only"] and not (run_dir / "summary.json").is_file():
                return {**entry, "status": "untrained"}
            if task["eval_only"]:
                check_recipe(recipe, run_dir)
            entry["action"] = "evaluated" if task["eval_only"] else _train_cell(recipe, run_dir)
            entry["train"] = _train_info(run_dir)
            previous = task.get("previous") or {}
            if _current(previous, entry["train"], task["eval"]):
                return {**previous, "action": entry["action"]}
            entry["eval"] = _evaluate_cell(run_dir, task["eval"], task["device"])
        return {**entry, "status": "done"}
    except (Exception, SystemExit) as err:  # a failed cell is reported; the study goes on
        log.error("%s seed %s failed:\n%s", task["variant"], task["seed"], traceback.format_exc())
        return {**entry, "status": "failed", "error": f"{type(err).__name__}: {err}"}


def _finished_elsewhere(task: dict[str, Any]) -> bool:
    """A cell whose results entry is complete for this recipe and these evaluation settings, but whose run
    directory is gone (``runs/`` is not committed: a study continued from a fresh checkout keeps the cells
    an earlier session finished instead of training them again)."""
    run_dir, previous = Path(task["run_dir"]), task.get("previous") or {}
    return (
        not task.get("retrain")
        and not run_dir.exists()
        and previous.get("status") == "done"
        and previous.get("overrides") == task["overrides"]
        and previous.get("eval", {}).get("settings") == task["eval"]
    )


def _current(previous: dict[str, Any], train: dict[str, Any], settings: dict[str, Any]) -> bool:
    """Whether a results entry already holds this training run's figures under these evaluation settings."""
    return (
        previous.get("status") == "done"
        and previous.get("train", {}).get("summary_mtime_ns") == train["summary_mtime_ns"]
        and previous.get("eval", {}).get("settings") == settings
    )


def _init_worker() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{os.getpid()}] %(name)s: %(message)s")


# ----------------------------------------------------------------------------------------------
# the results file


@contextlib.contextmanager
def _locked_dir(folder: Path) -> Iterator[None]:
    """An exclusive flock on the folder itself: two studies writing one results folder take turns."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_results(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"format": FORMAT, "cells": {}}
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise SystemExit(f"{path} is not a study results file (format {data.get('format')!r})")
    return data


def merge_entry(path: Path, study: Study, key: str, entry: dict[str, Any]) -> None:
    """Put one cell's entry into the results file, keeping every other entry, atomically and under a lock."""
    from akd_edge.core.files import write_json_atomic
    from akd_edge.core.version import __version__

    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked_dir(path.parent):
        data = read_results(path)
        data.update(
            study=study.name,
            spec=_rel(study.path),
            description=study.description,
            recipe=study.recipe,
            akd_edge_version=__version__,
            machine=f"{platform.machine()} {platform.processor() or ''}".strip() + f", {os.cpu_count()} cores",
            updated=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        kept = data["cells"].get(key, {})
        if entry["status"] == "failed" and kept.get("status") == "done":  # keep the figures; note the failure
            kept["last_failure"] = entry["error"]
        elif entry["status"] != "untrained":
            data["cells"][key] = {k: v for k, v in entry.items() if k != "action"}
        write_json_atomic(path, data)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------
# running the grid


def _tasks(study: Study, cells: list[Cell], args: argparse.Namespace, results: dict[str, Any]) -> list[dict]:
    settings = dict(study.eval)
    if args.attacks:
        settings["attacks"] = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if args.n is not None:
        settings["n"] = args.n
    if args.eval_batch:
        settings["batch_size"] = args.eval_batch
    recipe = str(_recipe_source(study))
    return [
        {
            "variant": cell.variant.name,
            "seed": cell.seed,
            "run_dir": str(cell.run_dir),
            "recipe": recipe,
            "overrides": recipe_overrides(study, cell, args.device),
            "eval": settings,
            "eval_only": args.eval_only,
            "retrain": args.retrain,
            "device": args.device,
            "previous": results["cells"].get(cell.key),
        }
        for cell in cells
    ]


def _recipe_source(study: Study) -> str | Path:
    """The base recipe: a shipped name, or a path relative to the repository or to the spec's folder."""
    for candidate in (Path(study.recipe), ROOT / study.recipe, study.path.parent / study.recipe):
        if candidate.suffix == ".toml" and candidate.is_file():
            return candidate
    return study.recipe


def _state(task: dict[str, Any]) -> str:
    run_dir = Path(task["run_dir"])
    if (run_dir / "summary.json").is_file():
        train = {"summary_mtime_ns": (run_dir / "summary.json").stat().st_mtime_ns}
        return "done" if _current(task["previous"] or {}, train, task["eval"]) else "evaluate"
    if _finished_elsewhere(task):
        return "done (run directory gone; results kept)"
    if task["eval_only"]:
        return "untrained (skipped: --eval-only)"
    return "resume" if (run_dir / "last.pt").is_file() else "train"


def print_plan(study: Study, tasks: list[dict[str, Any]], jobs: int, results_path: Path) -> None:
    print(f"study {study.name} ({_rel(study.path)}): base recipe {study.recipe}, {len(tasks)} cells, {jobs} jobs")
    print(f"results: {results_path}; evaluation: {json.dumps(tasks[0]['eval']) if tasks else '-'}")
    for task in tasks:
        sets = " ".join(o for o in task["overrides"] if not o.startswith(("run.name=", "run.seed=")))
        print(f"  {task['variant']}/seed{task['seed']}: {_state(task)}  {task['run_dir']}  [{sets}]")


def run_study(args: argparse.Namespace) -> int:
    from akd_edge.config import load_recipe

    study = load_study(args.study)
    runs = Path(args.runs or study.out_dir)
    results_path = Path(args.results) if args.results else RESULTS_DIR / f"{study.name}.json"
    only = [v.strip() for v in args.only.split(",") if v.strip()] if args.only else []
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else []
    cells = cells_of(study, runs, only, seeds, args.overrides)
    tasks = _tasks(study, cells, args, read_results(results_path))
    for task in tasks:  # every cell's recipe must parse before anything trains
        load_recipe(task["recipe"], task["overrides"])
    jobs = max(1, min(args.jobs or _cores(), len(tasks) or 1))
    print_plan(study, tasks, jobs, results_path)
    if args.dry_run:
        return 0
    started = time.perf_counter()
    failed = _dispatch(study, tasks, jobs, results_path)
    log.info(
        "study %s: %d cells in %.1f min, %d failed",
        study.name,
        len(tasks),
        (time.perf_counter() - started) / 60,
        failed,
    )
    return 1 if failed else 0


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _dispatch(study: Study, tasks: list[dict[str, Any]], jobs: int, results_path: Path) -> int:
    """Run the cells on ``jobs`` worker processes (spawned: no forked torch thread pools); returns failures."""
    import multiprocessing

    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers before they import torch
    failed = 0
    pending = [t for t in tasks if _state(t) != "done"]
    for task in tasks:
        if _state(task) == "done":
            log.info("%s/seed%s: done, skipped", task["variant"], task["seed"])
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker) as pool:
        futures: dict[Future, dict[str, Any]] = {pool.submit(run_cell, t): t for t in pending}
        remaining = set(futures)
        while remaining:
            done, remaining = wait(remaining, return_when=FIRST_COMPLETED)
            for future in done:
                entry = future.result()
                task = futures[future]
                key = f"{task['variant']}/seed{task['seed']}"
                merge_entry(results_path, study, key, entry)
                failed += entry["status"] == "failed"
                log.info("%s: %s%s", key, entry["status"], _brief(entry))
    return failed


def _brief(entry: dict[str, Any]) -> str:
    if entry.get("status") == "failed":
        return f" ({entry['error']})"
    ev = entry.get("eval")
    return f" ({entry.get('action')}): clean {ev['clean']:.4f}, robust {ev['robust']:.4f} on {ev['n']}" if ev else ""


# ----------------------------------------------------------------------------------------------
# the report


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1); the deviation of one value is nan."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else math.nan


def _pm(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def attack_label(settings: dict[str, Any]) -> str:
    name = settings["name"]
    if name == "pgd":
        restarts = f"x{settings['restarts']}" if settings.get("restarts", 1) > 1 else ""
        return f"PGD-{settings['steps']}{restarts}"
    return {"aa-fast": "AA fast", "aa-standard": "AutoAttack", "square": "Square"}.get(name, name)


def summarize(results: dict[str, Any], order: Sequence[str] = ()) -> tuple[list[dict[str, Any]], list[str]]:
    """Per variant, the finished cells evaluated with the most common settings; and notes on the rest."""
    cells = [c for c in results["cells"].values() if c.get("status") == "done"]
    notes = [
        f"{c['variant']}/seed{c['seed']}: failed ({c.get('error')})"
        for c in results["cells"].values()
        if c.get("status") == "failed"
    ]
    if not cells:
        return [], notes
    keys = [json.dumps(c["eval"]["settings"], sort_keys=True) for c in cells]
    common = max(set(keys), key=keys.count)
    for cell, key in zip(cells, keys, strict=True):
        if key != common:
            notes.append(f"{cell['variant']}/seed{cell['seed']}: left out, evaluated with other settings ({key})")
    cells = [c for c, k in zip(cells, keys, strict=True) if k == common]
    names = [n for n in order if any(c["variant"] == n for c in cells)]
    names += sorted({c["variant"] for c in cells} - set(names))
    rows = []
    for name in names:
        group = sorted((c for c in cells if c["variant"] == name), key=lambda c: c["seed"])
        rows.append(
            {
                "variant": name,
                "seeds": [c["seed"] for c in group],
                "epochs": sorted({c["train"]["epochs"] for c in group}),
                "best_epochs": [c["train"]["best_epoch"] for c in group],
                "clean": [c["eval"]["clean"] for c in group],
                "robust": [c["eval"]["robust"] for c in group],
                "attacks": {a: [c["eval"]["attacks"][a]["acc"] for c in group] for a in group[0]["eval"]["attacks"]},
                "train_min": [(c["train"]["train_time_s"] + c["train"]["val_time_s"]) / 60 for c in group],
                "params": group[0]["train"]["params"],
                "method": group[0]["train"]["method"],
            }
        )
    return rows, notes


def markdown(results: dict[str, Any], rows: list[dict[str, Any]], notes: list[str]) -> str:
    if not rows:
        return "no finished cells yet\n" + "".join(f"- {n}\n" for n in notes)
    sample = next(
        c for c in results["cells"].values() if c.get("status") == "done" and c["variant"] == rows[0]["variant"]
    )
    ev = sample["eval"]
    attacks = list(ev["attacks"])
    described = "; ".join(
        f"{attack_label(ev['attacks'][a]['settings'])}: {_settings_text(ev['attacks'][a]['settings'])}" for a in attacks
    )
    head = [
        f"Study `{results.get('study')}` (`{results.get('spec')}`, base recipe `{results.get('recipe')}`): "
        f"test split, first {ev['n']} images, {ev['settings'].get('which', 'best')} checkpoint; {described}. "
        f"Mean ± standard deviation over seeds; {results.get('machine')}, akd-edge {results.get('akd_edge_version')}.",
        "",
    ]
    multi = len(attacks) > 1
    cols = ["variant", "method", "params", "seeds", "epochs", "best epoch", "clean %"]
    cols += [f"{attack_label(ev['attacks'][a]['settings'])} %" for a in attacks] + (
        ["robust (worst) %"] if multi else []
    )
    cols += ["train min"]
    lines = [*head, "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["variant"], r["method"], f"{r['params']:,}", str(len(r["seeds"])), ",".join(map(str, r["epochs"]))]
        cells += [",".join(str(e) for e in r["best_epochs"]), _pm(r["clean"])]
        cells += [_pm(r["attacks"][a]) for a in attacks] + ([_pm(r["robust"])] if multi else [])
        cells += [f"{statistics.fmean(r['train_min']):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def _settings_text(settings: dict[str, Any]) -> str:
    keep = ("norm", "eps", "steps", "restarts", "step_size", "version", "n_queries", "seed")
    return ", ".join(
        f"{k} {settings[k]:.4g}" if isinstance(settings[k], float) else f"{k} {settings[k]}"
        for k in keep
        if k in settings
    )


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> str:
    """Robust against clean accuracy: each seed a point, each variant's mean a larger marker."""
    from akd_edge.evaluation import plots

    if not plots.matplotlib_available():
        return plots.MISSING
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, r in enumerate(rows):
        color = f"C{i % 10}"
        clean, robust = [100 * v for v in r["clean"]], [100 * v for v in r["robust"]]
        ax.scatter(clean, robust, color=color, alpha=0.45, s=18)
        ax.scatter(
            [statistics.fmean(clean)],
            [statistics.fmean(robust)],
            color=color,
            marker="D",
            s=70,
            edgecolors="black",
            label=f"{r['variant']} (n={len(clean)})",
        )
    ax.set_xlabel("clean accuracy %")
    ax.set_ylabel("robust accuracy %")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    plots._save(fig, path)
    return f"wrote {path}"


def report(args: argparse.Namespace) -> int:
    results_path = Path(args.results) if args.results else RESULTS_DIR / f"{Path(args.study).stem}.json"
    if not results_path.is_file():
        raise SystemExit(f"no results at {results_path}: run the study first")
    results = read_results(results_path)
    order: list[str] = []
    with contextlib.suppress(SystemExit):
        order = [v.name for v in load_study(args.study).variants]
    rows, notes = summarize(results, order)
    print(markdown(results, rows, notes), end="")
    if rows and not args.no_plot:
        ev = next(c["eval"] for c in results["cells"].values() if c.get("status") == "done")
        labels = ", ".join(attack_label(a["settings"]) for a in ev["attacks"].values())
        title = f"{results.get('study')}: robust (worst case over {labels}) vs clean, {ev['n']} test images"
        print(plot(rows, results_path.with_suffix(".png"), title))
    return 0


# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate the cells of a study (resumable)")
    run.add_argument("study", help="spec path, or a name in benchmarks/studies/")
    run.add_argument("--jobs", type=int, default=0, help="worker processes, one torch thread each (0 = cores)")
    run.add_argument("--only", default="", help="comma-separated variants to run")
    run.add_argument("--seeds", default="", help="comma-separated seeds (default: the spec's)")
    run.add_argument("--eval-only", action="store_true", help="evaluate finished cells, train nothing")
    run.add_argument(
        "--retrain",
        action="store_true",
        help="train again the finished cells whose run directory is gone (their kept results are replaced)",
    )
    run.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    run.add_argument("--attacks", default="", help="override the spec's eval attacks (pgd,aa-fast,aa-standard)")
    run.add_argument("--n", type=int, default=None, help="override the spec's number of test images (0 = all)")
    run.add_argument("--eval-batch", type=int, default=0, help="test images per evaluation batch (default 250)")
    run.add_argument("--device", default="", help="run.device for training and the evaluation device (cpu, cuda)")
    run.add_argument("--runs", default="", help="folder of the run directories (default: the spec's out_dir)")
    run.add_argument("--results", default="", help="results JSON (default benchmarks/results/<study>.json)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra override for every cell (use another --runs folder: the cells become other runs)",
    )
    rep = sub.add_parser("report", help="markdown table (mean ± std over seeds) and robust-vs-clean plot")
    rep.add_argument("study", help="spec path or study name")
    rep.add_argument("--results", default="", help="results JSON (default benchmarks/results/<study>.json)")
    rep.add_argument("--no-plot", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    return run_study(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
