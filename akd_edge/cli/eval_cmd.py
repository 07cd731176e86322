"""``akd-edge eval``: clean, PGD and AutoAttack accuracy, eps curve, calibration and sanity checks of a
run or checkpoint; ``--dynamics`` analyses or compares the training dynamics of runs.

Under torchrun the ranks share the attacked batches (:func:`akd_edge.evaluation.engine.sharded`): each rank
attacks every ``world``-th batch and all of them end with the whole result, the single-process one. Rank 0
writes eval.json and the plots; the others write theirs into a temporary folder that is removed.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.cli.common import (
    console,
    data_dir_option,
    device_option,
    make_progress,
    model_factory_option,
    n_option,
    out,
    out_option,
    seed_option,
    threads_option,
    user_errors,
    which_option,
)
from akd_edge.cli.launch import distributed_command
from akd_edge.core.errors import UsageError
from akd_edge.core.interval import REPORTED_N, format_interval, format_percent, interval_of


def _pct(value: float | None) -> str:
    return format_percent(value, unit="")


def _ci(entry: dict[str, Any]) -> str:
    return format_interval(entry.get("ci95"))


def _attack_label(name: str, settings: dict[str, Any]) -> str:
    if name == "pgd":
        restarts = f", {settings['restarts']} restarts" if settings["restarts"] > 1 else ""
        return f"PGD-{settings['steps']}{restarts}"
    label = {"aa-fast": "AutoAttack fast", "aa-standard": "AutoAttack standard", "square": "Square"}[name]
    if "n_queries" in settings:
        label += f" ({settings['n_queries']} queries)"
    return label


def print_report(report: dict[str, Any]) -> None:
    """The evaluation as rich tables: accuracies, calibration, eps curve; warnings on stderr."""
    results = report["results"]
    threat = report["threat"]
    title = (
        f"{report['checkpoint']['arch']} on {report['data']['n_samples']} {report['data']['name']} test images, "
        f"{threat['norm']} eps {threat['eps']:g}"
    )
    table = Table("evaluation", "accuracy %", "95% CI", "correct", "seconds", title=title)
    clean = results["clean"]
    table.add_row("clean", _pct(clean["acc"]), _ci(clean), f"{clean['correct']}/{clean['n']}", "")
    for name, entry in results["attacks"].items():
        label = _attack_label(name, entry["settings"])
        table.add_row(
            label, _pct(entry["acc"]), _ci(entry), f"{entry['correct']}/{entry['n']}", f"{entry['seconds']:.1f}"
        )
        after_ci = entry.get("after_ci95", {})
        for part, acc in entry.get("after", {}).items():
            table.add_row(f"  after {part}", _pct(acc), format_interval(after_ci.get(part)), "", "", style="dim")
    if len(results["attacks"]) > 1:
        worst = results["worst_case"]
        table.add_row(
            "worst case", _pct(worst["acc"]), _ci(worst), f"{worst['correct']}/{worst['n']}", "", style="bold"
        )
    out.print(table)
    if "calibration" in results:
        cal = Table("inputs", "ECE %", "NLL", "Brier", "accuracy %", "95% CI", title="calibration (15 bins)")
        for key, entry in results["calibration"].items():
            cal.add_row(
                key,
                _pct(entry["ece"]),
                f"{entry['nll']:.4f}",
                f"{entry['brier']:.4f}",
                _pct(entry["accuracy"]),
                format_interval(interval_of(entry["accuracy"], entry.get("n"))),
            )
        out.print(cal)
    if "eps_curve" in results:
        settings = results["eps_curve"]["settings"]
        curve = Table(
            "eps", "robust accuracy %", "95% CI", title=f"eps curve ({threat['norm']}, PGD-{settings['steps']})"
        )
        for point in results["eps_curve"]["points"]:
            curve.add_row(f"{point['eps']:g}", _pct(point["acc"]), _ci(point))
        out.print(curve)
    for warning in results["warnings"]:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
    note = report.get("plots", {}).get("note")
    if note:
        console.print(f"[yellow]{note}[/]", highlight=False)


def print_gap(report: dict[str, Any]) -> None:
    """Student and teacher accuracy per evaluation, and the gap in points."""
    scores, threat = report["scores"], report["threat"]
    title = (
        f"student vs teacher on {report['data']['n_samples']} {report['data']['name']} test images, "
        f"{threat['norm']} eps {threat['eps']:g}"
    )
    table = Table("evaluation", "student %", "teacher %", "gap (points)", title=title)
    for key, student in scores["student"].items():
        teacher = scores["teacher"].get(key, {})
        gap = report["gap"].get(key)
        table.add_row(
            key,
            _pct(student["acc"]),
            _pct(teacher.get("acc")) if "not_run" not in teacher else f"not run ({teacher['not_run']})",
            "-" if gap is None else f"{100 * gap:+.2f}",
        )
    out.print(table)


def print_dynamics(report: dict[str, Any]) -> None:
    """Per-run summary and, for two runs, the set-by-set comparison."""
    names = report["names"]
    summary = Table("", *names, title="training dynamics")
    summaries = report["summaries"]
    first = summaries[names[0]]
    summary.add_row(
        "epochs / training samples", *[f"{summaries[n]['epochs']} / {summaries[n]['n_train']}" for n in names]
    )
    for record in ("clean", "adv"):
        summary.add_row(f"{record}: final accuracy %", *[_pct(summaries[n][record]["final_accuracy"]) for n in names])
        summary.add_row(
            f"{record}: forgetting events / sample",
            *[f"{summaries[n][record]['forgetting_events_per_sample']:.3f}" for n in names],
        )
        for key in first[record]["sets"]:
            summary.add_row(f"{record}: {key}", *[f"{summaries[n][record]['sets'][key]['count']}" for n in names])
    out.print(summary)
    if "rows" in report:
        a, b = names
        table = Table("set", a, b, "both", f"only {a}", f"only {b}", "Jaccard", title=f"{a} vs {b}")
        for row in report["rows"]:
            jaccard = row["jaccard"]
            table.add_row(
                row["set"],
                str(row[a]),
                str(row[b]),
                str(row["both"]),
                str(row[f"only_{a}"]),
                str(row[f"only_{b}"]),
                "-" if jaccard is None or jaccard != jaccard else f"{jaccard:.3f}",
            )
        out.print(table)
    note = report.get("plots", {}).get("note")
    if note:
        console.print(f"[yellow]{note}[/]", highlight=False)


@click.command("eval")
@click.argument("sources", nargs=-1, required=True, metavar="RUN_OR_CHECKPOINT [RUN_B]")
@click.option(
    "--attack",
    "-a",
    "attacks",
    multiple=True,
    default=("pgd",),
    show_default=True,
    help="Attacks, repeatable or comma-separated: pgd, aa-fast (APGD-CE + APGD-T), aa-standard (APGD-CE, "
    "APGD-T, FAB-T, Square), square. Clean accuracy is always measured.",
)
@click.option("--eps", type=float, default=None, help="Attack radius (default: the checkpoint's threat model).")
@click.option("--norm", type=click.Choice(["linf", "l2"]), default=None, help="Default: the checkpoint's.")
@n_option("to evaluate on, the first N of the test split", REPORTED_N)
@click.option("--steps", type=int, default=20, show_default=True, help="PGD steps.")
@click.option("--restarts", type=int, default=1, show_default=True, help="PGD random restarts.")
@click.option("--step-size", type=float, default=0.0, show_default=True, help="PGD step size (0 = 2.5*eps/steps).")
@click.option("--queries", type=int, default=5000, show_default=True, help="Square attack queries.")
@seed_option("the attacks")
@click.option("--batch-size", type=int, default=250, show_default=True)
@click.option(
    "--eps-curve",
    default="",
    help="Comma-separated epsilons, e.g. 0,0.02,0.05,0.1,0.15: robust accuracy (PGD) as a table and eps_curve.png.",
)
@which_option()
@model_factory_option()
@data_dir_option("the one recorded in the checkpoint")
@out_option("Folder for eval.json and plots", "the run directory, or the checkpoint's folder")
@device_option("cpu")
@threads_option()
@click.option("--no-calibration", is_flag=True, help="Skip ECE / NLL / Brier.")
@click.option("--no-checks", is_flag=True, help="Skip the sanity checks.")
@click.option("--no-plots", is_flag=True, help="Write no PNG plots.")
@click.option(
    "--dynamics",
    is_flag=True,
    help="Analyse the training dynamics of RUN (dynamics.npz), or compare RUN_A and RUN_B, instead of attacking.",
)
@click.option("--names", default=None, help="With --dynamics: labels of the runs, e.g. at,akd.")
@click.option(
    "--teacher-gap",
    is_flag=True,
    help="Evaluate the distilled student RUN and its recipe's teachers on the same images and attacks; "
    "writes teacher_gap.json.",
)
@user_errors
@distributed_command
def eval_cmd(
    sources: tuple[str, ...],
    attacks: tuple[str, ...],
    eps: float | None,
    norm: str | None,
    n: int,
    steps: int,
    restarts: int,
    step_size: float,
    queries: int,
    seed: int,
    batch_size: int,
    eps_curve: str,
    which: str,
    model_factory: str | None,
    data_dir: str | None,
    out_dir: str | None,
    device: str,
    threads: int,
    no_calibration: bool,
    no_checks: bool,
    no_plots: bool,
    dynamics: bool,
    names: str | None,
    teacher_gap: bool,
) -> None:
    """Robust accuracy, calibration and sanity checks of RUN_OR_CHECKPOINT on its test split.

    \b
    Defaults fit a laptop CPU: 1000 test images, clean + PGD-20 (1 restart) at the checkpoint's threat
    model. Every accuracy comes with its 95% Wilson interval (about +-3 points on 1000 images, +-6 on
    200): fewer images cannot tell apart models a few points apart. AutoAttack is opt-in: --attack aa-fast
    (APGD-CE + APGD-T) costs about 5-10x PGD-20, aa-standard (adds FAB-T and Square with 5000 queries, the
    published ensemble) about 40x. Writes eval.json (every number with its settings, sample count, ci95
    and the package versions) into the run directory.

    Under torchrun the ranks share the batches (each rank attacks every N-th batch of --batch-size images;
    the numbers are those of one process) and rank 0 writes the files.

    \b
    Examples:
      akd-edge eval runs/fmnist-akd
      akd-edge eval runs/fmnist-akd --attack pgd,aa-fast --eps-curve 0,0.05,0.1,0.15,0.2
      akd-edge eval --dynamics runs/fmnist-at runs/fmnist-akd --names at,akd
      torchrun --nproc_per_node 4 -m akd_edge eval runs/cifar-akd --attack aa-standard -n 10000 --device cuda
    """
    from akd_edge.core.distributed import current, rank_device
    from akd_edge.evaluation.engine import sharded

    group = current()
    is_main = group is None or group.is_main
    if dynamics:
        if is_main:  # no attacks to share: rank 0 reads the runs and writes the report
            _dynamics(sources, names, out_dir, plots=not no_plots)
        return
    if len(sources) != 1:
        raise UsageError(f"eval takes one run or checkpoint (got {len(sources)}); two runs only with --dynamics")
    fields = {
        "n": n,
        "batch_size": batch_size,
        "steps": steps,
        "restarts": restarts,
        "step_size": step_size,
        "n_queries": queries,
        "seed": seed,
        "eps_curve": tuple(_eps_values(eps_curve)),
        "calibration": not no_calibration,
        "checks": not no_checks,
        "plots": not no_plots and is_main,
        "data_dir": data_dir,
        "which": which,
        "device": str(rank_device(device, group)),
        "factory": model_factory,
    }
    with sharded(group), _rank_out(out_dir, is_main) as where:
        if teacher_gap:
            _teacher_gap(sources[0], threads, where, attacks=attacks, norm=norm, eps=eps, **fields)
            return
        from akd_edge import api

        with make_progress(transient=True) if is_main else contextlib.nullcontext() as progress:
            results = api.evaluate(
                sources[0],
                attacks=attacks,
                norm=norm,
                eps=eps,
                threads=threads,
                out=where,
                write=True,
                progress=_updater(progress),
                **fields,
            )
    print_report(results.report)
    console.print(written_line(results.path, results.report), highlight=False, soft_wrap=True)


def _dynamics(sources: tuple[str, ...], names: str | None, out_dir: str | None, *, plots: bool) -> None:
    """``--dynamics``: analyse one run's training dynamics, or compare two, and print the tables."""
    from akd_edge import api

    labels = [v.strip() for v in names.split(",")] if names else None
    report, path = api.dynamics(sources, names=labels, out=out_dir, plots=plots)
    print_dynamics(report)
    console.print(written_line(path, report), highlight=False, soft_wrap=True)


def _teacher_gap(source: str, threads: int, out_dir: str | None, **options: Any) -> None:
    """``--teacher-gap``: the student and its recipe's teachers on the same images and attacks."""
    from akd_edge import api

    report, path = api.teacher_gap(source, threads=threads, out=out_dir, **options)
    print_gap(report)
    console.print(written_line(path, report), highlight=False, soft_wrap=True)


def written_line(path: Path, report: dict[str, Any]) -> str:
    """One line naming every file an evaluation wrote: the JSON and its plots (``wrote eval.json,
    eps_curve.png, reliability.png in runs/x``)."""
    plots = {key: name for key, name in (report.get("plots") or {}).items() if key != "note" and isinstance(name, str)}
    names = ", ".join([path.name, *plots.values()])
    return escape(f"wrote {names} in {path.parent}")


def _updater(progress: Any) -> Callable[[int, int, str], None] | None:
    """The engine's progress callback drawing on ``progress`` (None: no bar, as on ranks other than 0)."""
    if progress is None:
        return None
    task = progress.add_task("eval", total=None, info="")

    def update(done: int, total: int, info: str) -> None:
        progress.update(task, completed=done, total=total, info=info)

    return update


@contextlib.contextmanager
def _rank_out(out_dir: str | None, is_main: bool) -> Iterator[str | None]:
    """Where this process writes: ``--out`` on rank 0 (and in a single process); on the other ranks, which
    compute the same report, a temporary folder removed afterwards, so that rank 0 alone writes files."""
    if is_main:
        yield out_dir
        return
    with tempfile.TemporaryDirectory(prefix="akd-edge-rank-") as scratch:
        yield str(Path(scratch))


def _eps_values(text: str) -> list[float]:
    from akd_edge.metrics.robust import eps_grid

    return eps_grid(text) if text.strip() else []
