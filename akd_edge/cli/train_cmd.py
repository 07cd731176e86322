"""`akd-edge train-teacher` and `akd-edge distill`: run a recipe through the training loop.

Exit status: 0 trained, 2 usage error (bad recipe, run directory in use or not a run, refused resume
override), 3 training diverged (the loss became NaN or inf; the last good checkpoint is kept), 4 (under
torchrun) another rank failed or did not answer, 130 stopped by Ctrl-C (or, under torchrun, SIGTERM) after
saving a resumable checkpoint.

Under torchrun both commands train data-parallel (:mod:`akd_edge.cli.launch`, docs/DISTRIBUTED.md): rank 0
claims the run directory and prints; every rank trains its share of each batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.api import DEFAULT_DISTILL_RECIPE, DEFAULT_TEACHER_RECIPE
from akd_edge.cli.common import (
    EXIT_DIVERGED,
    allow_code_option,
    console,
    data_dir_option,
    device_option,
    model_factory_option,
    options,
    out,
    out_option,
    set_option,
    user_errors,
    with_flags,
)
from akd_edge.cli.launch import distributed_command
from akd_edge.cli.progress import RichCallbacks

if TYPE_CHECKING:
    from akd_edge.config import Recipe


def training_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"{summary['role']} {summary['model']} ({summary['method']})", show_header=False)
    best, threat = summary["best"], summary["threat"]
    attack = summary["last"].get("attack", {})
    table.add_row("run directory", summary["run_dir"])
    table.add_row("parameters / MACs", f"{summary['params']:,} / {summary['macs']:,}")
    table.add_row("best epoch (early stopping)", f"{best.get('epoch')} of {summary['epochs']}")
    table.add_row(
        "val clean / robust (best)",
        f"{best.get('clean_acc', 0):.2%} / {best.get('robust_acc', 0):.2%}  "
        f"(PGD-{attack.get('steps', '?')} {threat['norm']} eps {threat['eps']:g}, n={best.get('n')})",
    )
    last = summary["last"]
    table.add_row("val clean / robust (last)", f"{last.get('clean_acc', 0):.2%} / {last.get('robust_acc', 0):.2%}")
    ta = summary["train_attack"]
    table.add_row("training attack", f"{ta['name']} {ta['norm']} eps {ta['eps']:g} steps {ta['steps']}")
    table.add_row("training time", f"{summary['train_time_s']:.0f} s ({summary['images_per_s']:.0f} img/s on average)")
    table.add_row("checkpoints", "best.pt (best robust val), last.pt, epochs/")
    return table


def _given(name: str) -> bool:
    """Whether the user passed option ``name`` (not just its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _train(
    role: str,
    recipe: str | Recipe | None,
    overrides: tuple[str, ...],
    run_dir: str | Path | None,
    *,
    resume: bool = False,
    allow_code: bool = False,
) -> None:
    """Train through the API (:func:`akd_edge.api.distill` or :func:`~akd_edge.api.train_teacher`) with progress
    bars on rank 0, then print the summary and the usual next command.

    Ctrl-C saves a resumable checkpoint and exits 130 with the command that resumes it; a loss that became NaN or
    inf exits :data:`EXIT_DIVERGED`.
    """
    from akd_edge import api
    from akd_edge.core.distributed import current
    from akd_edge.train.loop import Callbacks
    from akd_edge.train.stops import Diverged, Interrupted

    train = api.train_teacher if role == "teacher" else api.distill
    group = current()
    try:
        with RichCallbacks() if group is None or group.is_main else contextlib.nullcontext(Callbacks()) as callbacks:
            _, summary = train(
                recipe,
                overrides=overrides,
                run_dir=run_dir,
                resume=resume,
                callbacks=callbacks,
                allow_code=allow_code,
                save_on_ctrl_c=True,
            )
    except Interrupted as stop:
        launcher = "akd-edge" if group is None else "torchrun [options] -m akd_edge"
        console.print(
            f"[yellow]stopped; checkpoint saved.[/] Resume with: {launcher} {_cmd(role)} --resume {stop.run_dir}"
        )
        raise click.exceptions.Exit(130) from None
    except Diverged as stop:
        console.print(f"[bold red]error:[/] {escape(str(stop))}", highlight=False)
        raise click.exceptions.Exit(EXIT_DIVERGED) from None
    out.print(training_table(summary))
    console.print(f"next: {escape(next_step(role, summary['run_dir']))}", highlight=False, soft_wrap=True)


def _resume(role: str, run_dir: str, overrides: tuple[str, ...], given: dict[str, Any], allow_code: bool) -> None:
    """``--resume``: the run continues as its recipe.toml says; a flag in ``given`` that was given (--recipe, --out,
    --teacher...) or an override of a key outside RESUME_MAY_CHANGE is refused by name, not applied or ignored."""
    from akd_edge.train.rundir import refuse_resume_changes

    refuse_resume_changes(run_dir, overrides, [flag for flag, value in given.items() if value])
    _train(role, None, overrides, run_dir, resume=True, allow_code=allow_code)


def next_step(role: str, run_dir: str) -> str:
    """The command that usually follows a finished run: export a student, distill from a teacher."""
    import shlex

    if role == "teacher":
        return f"akd-edge distill --teacher {shlex.quote(run_dir)}"
    return f"akd-edge export {shlex.quote(run_dir)}"


def _cmd(role: str) -> str:
    return "train-teacher" if role == "teacher" else "distill"


_run_options = options(
    set_option(),
    out_option("Run directory", "<run.out_dir>/<run.name>"),
    click.option(
        "--resume", type=click.Path(exists=True, file_okay=False), help="Continue the killed run in this directory."
    ),
    device_option(),
    data_dir_option("the recipe's data.data_dir"),
    allow_code_option(),
)

_TRAINING_NOTES = (
    "Exit status: 0 trained, 2 usage error, 3 the loss diverged (NaN/inf), 4 another torchrun rank failed, "
    "130 stopped by Ctrl-C (under torchrun also SIGTERM). Launched by torchrun (torchrun --nproc_per_node N "
    "-m akd_edge ...) it trains data-parallel, data.batch_size being the global batch (docs/DISTRIBUTED.md)."
)


def _training_command(name: str, summary: str) -> Callable[[Callable[..., Any]], click.Command]:
    """``click.command`` for a training verb: its help is ``summary``, then the notes both verbs share."""
    return click.command(name, help=f"{summary}\n\n{_TRAINING_NOTES}")


@_training_command(
    "train-teacher",
    "Adversarially train a robust teacher (AT or TRADES) with early stopping on robust validation accuracy.",
)
@click.option("--recipe", "-r", default=DEFAULT_TEACHER_RECIPE, show_default=True, help="Recipe file or shipped name.")
@_run_options
@user_errors
@distributed_command
def train_teacher(
    recipe: str,
    overrides: tuple[str, ...],
    out_dir: str | None,
    resume: str | None,
    device: str | None,
    data_dir: str | None,
    allow_code: bool,
) -> None:
    flags = with_flags(overrides, device, data_dir)
    if resume:
        _resume("teacher", resume, flags, {"--recipe": _given("recipe"), "--out": out_dir}, allow_code)
    else:
        _train("teacher", recipe, flags, out_dir)


@_training_command("distill", "Distill robust teacher(s) into a compact student (AKD by default), as a recipe says.")
@click.option("--recipe", "-r", default=DEFAULT_DISTILL_RECIPE, show_default=True, help="Recipe file or shipped name.")
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    metavar="PATH",
    help="Teacher run directory or checkpoint (repeat for an ensemble); replaces the recipe's teachers.",
)
@model_factory_option(
    "--teacher-factory",
    "the teachers'",
    " Applies to every teacher; for teachers of different architectures set factory in each [[teachers]] entry.",
)
@_run_options
@click.option(
    "--reuse",
    is_flag=True,
    help="Train only if needed: a finished run of this very recipe and teachers where distill puts runs "
    "(<run.out_dir>/<run.name>[-N]) is reported, not trained again; an interrupted one is resumed "
    "(what `make demo` runs).",
)
@user_errors
@distributed_command
def distill(
    recipe: str,
    teachers: tuple[str, ...],
    teacher_factory: str | None,
    overrides: tuple[str, ...],
    out_dir: str | None,
    resume: str | None,
    device: str | None,
    data_dir: str | None,
    allow_code: bool,
    reuse: bool,
) -> None:
    flags = with_flags(overrides, device, data_dir)
    if resume:
        given = {
            "--recipe": _given("recipe"),
            "--out": out_dir,
            "--teacher": teachers,
            "--teacher-factory": teacher_factory,
        }
        _resume("student", resume, flags, given, allow_code)
        return
    from akd_edge.config import load_recipe

    cfg = load_recipe(recipe, list(flags))
    if teachers or teacher_factory:
        from dataclasses import replace

        from akd_edge.config import TeacherSpec

        specs = [TeacherSpec(path=t) for t in teachers] if teachers else cfg.teachers
        cfg = replace(cfg, teachers=[replace(spec, factory=teacher_factory or spec.factory) for spec in specs])
    if reuse and out_dir is None:
        reused, found = _reused(cfg)
        if reused is not None:
            _train("student", reused, (), found, resume=found is not None)
        return
    _train("student", cfg, (), out_dir)


def _reused(recipe: Recipe) -> tuple[Recipe | None, Path | None]:
    """``--reuse``: (None, run) after saying a finished run exists; (its recipe, run) to resume; (recipe, None)."""
    from akd_edge.run.root import find_run, resumed_recipe, teacher_digests

    found = find_run(recipe, teacher_digests(recipe), None)
    if found is None:
        return recipe, None
    if not found.finished:
        console.print(
            f"[yellow]resuming[/] the interrupted run {escape(str(found.path))} of this recipe "
            f"(--out NEW_DIR starts a new one instead)",
            highlight=False,
            soft_wrap=True,
        )
        return resumed_recipe(found.path, recipe), found.path
    console.print(
        f"[green]already trained:[/] {escape(str(found.path))} is a finished run of this recipe, not trained again. "
        f"next: {escape(next_step('student', str(found.path)))}   (to train again: --out NEW_DIR)",
        highlight=False,
        soft_wrap=True,
    )
    return None, found.path
