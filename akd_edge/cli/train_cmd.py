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
import json
import time
from pathlib import Path
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.cli.common import (
    EXIT_DIVERGED,
    allow_code_option,
    console,
    data_dir_option,
    device_option,
    make_progress,
    model_factory_option,
    options,
    out,
    out_option,
    set_option,
    user_errors,
)
from akd_edge.cli.launch import distributed_command
from akd_edge.config import Recipe, load_recipe, parse_override
from akd_edge.core.errors import ConfigError

TEACHER_METHODS = ("at", "trades")
DEFAULT_DISTILL_RECIPE = "fmnist-quickstart"
DEFAULT_TEACHER_RECIPE = "fmnist-teacher"


PLAIN_LINES_PER_EPOCH = 10
"""Off a terminal (output to a file or a pipe) progress bars do not draw: a line every tenth of an epoch instead."""


class RichCallbacks:
    """Progress bars (epoch and batch), a line per epoch, and off a terminal a progress line every
    tenth of an epoch, and nothing else."""

    def __init__(self) -> None:
        self.progress = make_progress()
        self.epoch_task: Any = None
        self.batch_task: Any = None
        self.started = time.perf_counter()
        self.epoch_text = ""
        self.line_every = 0
        self.total_batches = 0

    def __enter__(self) -> RichCallbacks:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def on_train_start(self, run_dir: Path, info: dict[str, Any]) -> None:
        unlabeled = f" + {info['unlabeled']:,} unlabelled" if info.get("unlabeled") else ""
        console.print(
            f"run directory [bold]{run_dir}[/]  ({info['params']:,} parameters, {info['macs']:,} MACs; "
            f"{info['train']:,} training{unlabeled} / {info['val']:,} validation images; device {info['device']}, "
            f"{info.get('speed', 'fp32')})"
        )

    def on_epoch_start(self, epoch: int, epochs: int, total_batches: int, start_batch: int) -> None:
        if self.epoch_task is None:
            self.epoch_task = self.progress.add_task("epochs", total=epochs, completed=epoch - 1, info="")
        if self.batch_task is not None:
            self.progress.remove_task(self.batch_task)
        self.epoch_text = f"epoch {epoch}/{epochs}"
        self.batch_task = self.progress.add_task(self.epoch_text, total=total_batches, completed=start_batch, info="")
        self.line_every = 0 if console.is_terminal else max(1, -(-total_batches // PLAIN_LINES_PER_EPOCH))
        self.total_batches = total_batches

    def on_batch(self, batch: int, stats: dict[str, float]) -> None:
        info = f"loss {stats['loss']:.3f}  acc {stats['acc']:.1%}  {stats['images_per_s']:.0f} img/s"
        self.progress.update(self.batch_task, completed=batch, info=info)
        if self.line_every and batch % self.line_every == 0:
            console.print(
                f"{self.epoch_text} batch {batch}/{self.total_batches}  {info}", highlight=False, soft_wrap=True
            )

    def on_validate(self, epoch: int) -> None:
        self.progress.update(self.batch_task, info="validating (PGD)...")

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        val = record["val"]
        star = " [green]best[/]" if record["improved"] else ""
        self.progress.console.print(
            f"epoch {record['epoch']:>3}  train loss {record['loss']:.3f} acc {record['acc']:.1%}  "
            f"val clean {val['clean_acc']:.1%} robust {val['robust_acc']:.1%}  "
            f"{record['images_per_s']:.0f} img/s{star}"
        )
        self.progress.update(self.epoch_task, completed=record["epoch"])


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


def _load(
    recipe: str,
    overrides: tuple[str, ...],
    resume: str | None,
    flags: dict[str, object] | None = None,
    allow_code: bool = False,
) -> tuple[Recipe, Path | None]:
    """The recipe to run: the run directory's own when resuming, else the named one with overrides.

    A resumed run keeps its recipe: only the keys in RESUME_MAY_CHANGE (and --device) may be given; any
    other override, or one of ``flags`` that was given (--recipe, --out, --teacher), is refused by name
    instead of being applied or ignored. A ``module:factory`` its recipe.toml names needs ``allow_code``.
    """
    if not resume:
        return load_recipe(recipe, list(overrides)), None
    from akd_edge.train.rundir import RESUME_MAY_CHANGE, run_recipe

    run_dir = Path(resume)
    refused = [flag for flag, given in (flags or {}).items() if given]
    refused += [key for key in (".".join(parse_override(o)[0]) for o in overrides) if key not in RESUME_MAY_CHANGE]
    if refused:
        raise ConfigError(
            f"--resume {run_dir} continues the run as its recipe.toml says; refused: {', '.join(refused)}. "
            f"Only {', '.join(RESUME_MAY_CHANGE)} (and --device) may change when resuming; to train differently "
            f"start a new run, e.g. --recipe {run_dir / 'recipe.toml'} --set ... --out NEW_DIR"
        )
    return run_recipe(run_dir, overrides, allow_code=allow_code), run_dir


def _given(name: str) -> bool:
    """Whether the user passed option ``name`` (not just its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def _claim(recipe: Recipe, run_dir: Path | None, out_dir: str | None) -> tuple[Any, Path]:
    """The run directory, locked (checked writable before any data loads), and its path.

    Under torchrun rank 0 claims it and the other ranks get its path (None for the lock); a refusal stops
    every rank with rank 0's message.
    """
    from akd_edge.core.distributed import current
    from akd_edge.train.rundir import claim_run_dir, open_run_dir

    group = current()
    held: list[Any] = []

    def claim() -> str:
        held.append(open_run_dir(run_dir) if run_dir else claim_run_dir(recipe, out_dir))
        return str(held[0].path)

    path = claim() if group is None else group.from_main(claim)
    return (held[0] if held else None), Path(path)


def _run(recipe: Recipe, run_dir: Path | None, out_dir: str | None, role: str) -> dict[str, Any]:
    """Claim the run directory (locked, checked writable before any data loads), then train in it."""
    from akd_edge.core.distributed import current
    from akd_edge.core.env import torch_threads
    from akd_edge.train.loop import Callbacks, train_run
    from akd_edge.train.stops import Diverged, Interrupted

    with torch_threads(recipe.run.threads, "run.threads"):
        claimed, path = _claim(recipe, run_dir, out_dir)
        with claimed or contextlib.nullcontext():
            try:
                with RichCallbacks() if claimed is not None else contextlib.nullcontext(Callbacks()) as callbacks:
                    summary = train_run(
                        recipe,
                        claimed or path,
                        resume=run_dir is not None,
                        role=role,
                        callbacks=callbacks,
                        save_on_ctrl_c=True,
                    )
            except Interrupted as stop:
                launcher = "akd-edge" if current() is None else "torchrun [options] -m akd_edge"
                console.print(
                    f"[yellow]stopped; checkpoint saved.[/] Resume with: {launcher} {_cmd(role)} --resume {stop.run_dir}"
                )
                raise click.exceptions.Exit(130) from None
            except Diverged as stop:
                console.print(f"[bold red]error:[/] {escape(str(stop))}", highlight=False)
                raise click.exceptions.Exit(EXIT_DIVERGED) from None
    out.print(training_table(summary))
    console.print(f"next: {escape(next_step(role, summary['run_dir']))}", highlight=False, soft_wrap=True)
    return summary


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


def _with_flags(overrides: tuple[str, ...], device: str | None, data_dir: str | None) -> tuple[str, ...]:
    """The --set overrides plus those that --device and --data-dir stand for."""
    extra = [f"run.device={json.dumps(device)}"] if device else []
    extra += [f"data.data_dir={json.dumps(data_dir)}"] if data_dir else []
    return (*overrides, *extra)


@click.command("train-teacher")
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
    """Adversarially train a robust teacher (AT or TRADES) with early stopping on robust validation accuracy.

    Exit status: 0 trained, 2 usage error, 3 the loss diverged (NaN/inf), 4 another torchrun rank failed,
    130 stopped by Ctrl-C (under torchrun also SIGTERM). Launched by torchrun (torchrun --nproc_per_node N
    -m akd_edge ...) it trains data-parallel, data.batch_size being the global batch (docs/DISTRIBUTED.md).
    """
    flags = _with_flags(overrides, device, data_dir)
    cfg, run_dir = _load(recipe, flags, resume, {"--recipe": _given("recipe"), "--out": out_dir}, allow_code)
    if cfg.method.name not in TEACHER_METHODS:
        raise ConfigError(f"method.name={cfg.method.name!r}: a teacher trains with {' or '.join(TEACHER_METHODS)}")
    _run(cfg, run_dir, out_dir, "teacher")


@click.command("distill")
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
    """Distill robust teacher(s) into a compact student (AKD by default), as a recipe says.

    Exit status: 0 trained, 2 usage error, 3 the loss diverged (NaN/inf), 4 another torchrun rank failed,
    130 stopped by Ctrl-C (under torchrun also SIGTERM). Launched by torchrun (torchrun --nproc_per_node N
    -m akd_edge ...) it trains data-parallel, data.batch_size being the global batch (docs/DISTRIBUTED.md).
    """
    flags = _with_flags(overrides, device, data_dir)
    given = {
        "--recipe": _given("recipe"),
        "--out": out_dir,
        "--teacher": teachers,
        "--teacher-factory": teacher_factory,
    }
    cfg, run_dir = _load(recipe, flags, resume, given, allow_code)
    if teachers or teacher_factory:
        from dataclasses import replace

        from akd_edge.config import TeacherSpec

        specs = [TeacherSpec(path=t) for t in teachers] if teachers else cfg.teachers
        cfg = replace(cfg, teachers=[replace(spec, factory=teacher_factory or spec.factory) for spec in specs])
    if reuse and run_dir is None and out_dir is None:
        cfg, run_dir = _reused(cfg)
        if cfg is None:
            return
    _run(cfg, run_dir, out_dir, "student")


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
