#!/usr/bin/env python
"""Benchmark: the same student trained with AT, TRADES, ARD, RSLAD and AKD from the same teacher.

Fashion-MNIST, Linf epsilon 0.1, recipe ``fmnist-akd`` (cnn-student, teacher ``builtin:fmnist-teacher``);
only ``method.name`` changes between rows. Each student is judged on the test split by clean accuracy,
PGD-20, AutoAttack and ECE (``akd_edge.evaluation``), each accuracy with its 95% Wilson interval on at
least 1,000 test images, and the result is a markdown table for the README that says which settings
produced it and how long it took.

    python benchmarks/akd_vs_at.py                 # a subset that fits a 2-core CPU (see DEFAULT)
    python benchmarks/akd_vs_at.py --full          # the recipe's settings, all data, AutoAttack standard
    python benchmarks/akd_vs_at.py --epochs 2 --train-subset 5000 --methods at,akd

Training goes into ``--out/<method>`` (default ``runs/bench-akd-vs-at``); ``--reuse`` evaluates existing
runs again without training. The table is printed and written to ``--out/akd_vs_at.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

from akd_edge.core.interval import REPORTED_N, format_interval

METHODS = ("at", "trades", "ard", "rslad", "akd")
DEFAULT = {"epochs": 3, "train_subset": 10000, "n_eval": REPORTED_N, "aa": "aa-fast"}
"""Sized for a 2-core CPU: 3 epochs on 10k training images, 1000 test images, AutoAttack fast.

Not yet timed end to end (the table reports the time it took). On a busy machine, ``--threads 1`` is far
faster for this 24k-parameter student than torch's default of one thread per core."""
FULL = {"epochs": 0, "train_subset": 0, "n_eval": 10000, "aa": "aa-standard"}
"""The recipe's epochs (0 = keep), the whole training split, the whole test split, AutoAttack standard."""
RECIPE = "fmnist-akd"
EPS = 0.1

log = logging.getLogger("akd_vs_at")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="Full settings (recipe epochs, all data, AA standard).")
    parser.add_argument(
        "--epochs", type=int, default=None, help="Training epochs (default: 3, or the recipe's with --full)."
    )
    parser.add_argument("--train-subset", type=int, default=None, help="Training images (0 = all; default 10000).")
    parser.add_argument("--n-eval", type=int, default=None, help="Test images (default 1000; 10000 with --full).")
    parser.add_argument(
        "--aa", choices=["aa-fast", "aa-standard", "none"], default=None, help="AutoAttack version (default aa-fast)."
    )
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="Comma-separated subset of at,trades,ard,rslad,akd."
    )
    parser.add_argument("--out", default="runs/bench-akd-vs-at", help="Folder for the runs and the table.")
    parser.add_argument(
        "--reuse", action="store_true", help="Evaluate runs already trained in --out; train the others."
    )
    parser.add_argument("--dynamics", action="store_true", help="Record training dynamics; compare AT and AKD.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default).")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="Extra recipe override, repeatable."
    )
    return parser.parse_args(argv)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """Resolved settings: the preset (DEFAULT or FULL) with any explicit flag on top."""
    preset = dict(FULL if args.full else DEFAULT)
    for key in ("epochs", "train_subset", "n_eval", "aa"):
        value = getattr(args, key)
        if value is not None:
            preset[key] = value
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    preset.update(methods=methods, seed=args.seed, full=args.full, overrides=list(args.overrides))
    return preset


def recipe_for(method: str, settings: dict[str, Any], dynamics: bool) -> Any:
    from akd_edge.config import load_recipe

    overrides = [f"method.name={method}", f"run.name=bench-{method}", f"run.seed={settings['seed']}"]
    if settings["epochs"]:
        overrides.append(f"train.epochs={settings['epochs']}")
    if settings["train_subset"]:
        overrides.append(f"data.train_subset={settings['train_subset']}")
    if dynamics:
        overrides.append("train.record_dynamics=true")
    return load_recipe(RECIPE, overrides=overrides + settings["overrides"])


def train(method: str, settings: dict[str, Any], run_dir: Path, reuse: bool, dynamics: bool) -> float:
    """Train one student; with ``reuse``, skip a finished run and resume an interrupted one.

    Returns the training seconds (for a reused run, its summary's training + validation time).
    """
    from akd_edge.train.loop import train_run  # the lead's training loop, imported only when training

    summary_path = run_dir / "summary.json"
    if reuse and (run_dir / "best.pt").is_file() and summary_path.is_file():
        log.info("%s: reusing %s", method, run_dir)
        summary = json.loads(summary_path.read_text())
        return float(summary.get("train_time_s", float("nan"))) + float(summary.get("val_time_s", 0.0))
    recipe = recipe_for(method, settings, dynamics)
    start = time.perf_counter()
    train_run(recipe, run_dir, resume=reuse and (run_dir / "last.pt").is_file())
    return time.perf_counter() - start


def evaluate_run(run_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    from akd_edge.evaluation.command import EvalOptions, evaluate

    attacks = ("pgd",) if settings["aa"] == "none" else ("pgd", settings["aa"])
    options = EvalOptions(
        attacks=attacks, norm="linf", eps=EPS, n=settings["n_eval"], steps=20, restarts=1, seed=settings["seed"]
    )
    report, _ = evaluate(run_dir, options, out_dir=run_dir)
    return report


def row_of(method: str, report: dict[str, Any], train_seconds: float) -> dict[str, Any]:
    results = report["results"]
    aa = next((v for k, v in results["attacks"].items() if k.startswith("aa")), None)
    return {
        "method": method,
        "n": results["clean"]["n"],
        "clean": results["clean"]["acc"],
        "clean_ci95": results["clean"]["ci95"],
        "pgd20": results["attacks"]["pgd"]["acc"],
        "pgd20_ci95": results["attacks"]["pgd"]["ci95"],
        "autoattack": aa["acc"] if aa else None,
        "autoattack_ci95": aa["ci95"] if aa else [None, None],
        "worst_case": results["worst_case"]["acc"],
        "worst_case_ci95": results["worst_case"]["ci95"],
        "ece_clean": results["calibration"]["clean"]["ece"],
        "ece_adv": results["calibration"].get("adversarial", {}).get("ece"),
        "train_s": train_seconds,
        "eval_s": report["seconds"],
        "warnings": results["warnings"],
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _acc(row: dict[str, Any], key: str) -> str:
    """``68.5 [65.6, 71.3]``: an accuracy (%) with its 95% Wilson interval."""
    value = row[key]
    return "-" if value is None else f"{_pct(value)} {format_interval(row.get(f'{key}_ci95'))}"


def _minutes(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds / 60:.1f}"


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any], total_s: float) -> str:
    aa_label = {
        "aa-fast": "AutoAttack fast (APGD-CE+APGD-T)",
        "aa-standard": "AutoAttack standard",
        "none": "AutoAttack",
    }[settings["aa"]]
    full = settings["full"] and not settings["overrides"] and settings["aa"] == "aa-standard"
    full = full and not settings["epochs"] and not settings["train_subset"] and settings["n_eval"] >= 10000
    scope = "full settings" if full else "reduced settings (`--full` for the full ones)"
    epochs = settings["epochs"] or "recipe (15)"
    subset = settings["train_subset"] or "all 55,000"
    lines = [
        f"Fashion-MNIST, Linf eps {EPS}, cnn-student from `builtin:fmnist-teacher` (recipe `{RECIPE}`), "
        f"**{scope}**: {epochs} epochs on {subset} training images; evaluated on the first {settings['n_eval']} "
        f"test images (PGD-20, 1 restart; {aa_label}; ECE with 15 bins); accuracies in % with their 95% Wilson interval [low, high]. Seed {settings['seed']}; "
        f"{platform.machine()} CPU, torch threads {_threads()}; total {total_s / 60:.1f} min.",
        "",
        f"| method | clean % | PGD-20 % | {aa_label} % | ECE clean % | ECE adv % | train min | eval min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {_acc(r, 'clean')} | {_acc(r, 'pgd20')} | {_acc(r, 'autoattack')} | "
            f"{_pct(r['ece_clean'])} | {_pct(r['ece_adv'])} | {_minutes(r['train_s'])} | {_minutes(r['eval_s'])} |"
        )
    warned = [f"- {r['method']}: {w}" for r in rows for w in r["warnings"]]
    if warned:
        lines += ["", "Sanity-check warnings:", *warned]
    return "\n".join(lines) + "\n"


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = settings_of(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for method in settings["methods"]:
        run_dir = out / method
        train_s = train(method, settings, run_dir, args.reuse, args.dynamics)
        report = evaluate_run(run_dir, settings)
        rows.append(row_of(method, report, train_s))
        log.info("%s: %s", method, {k: v for k, v in rows[-1].items() if k != "warnings"})
    total = time.perf_counter() - start
    table = markdown(rows, settings, total)
    (out / "akd_vs_at.md").write_text(table)
    (out / "akd_vs_at.json").write_text(json.dumps({"settings": settings, "rows": rows, "seconds": total}, indent=2))
    if args.dynamics and {"at", "akd"} <= set(settings["methods"]):
        from akd_edge.evaluation.dynamics import evaluate_dynamics

        _, path = evaluate_dynamics([out / "at", out / "akd"], names=["at", "akd"], out_dir=out)
        log.info("training dynamics comparison: %s", path)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
