"""``akd-edge run``: recipe to distilled, pruned, exported and verified models and a report, resumable.

Exit status: 0 done, 1 an export failed its checks (the attempt is kept beside it), 2 usage error, 3 the
training loss diverged, 130 stopped by Ctrl-C. After any of them, the same command continues where it stopped.
Nothing heavy is imported at module level.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from akd_edge.cli.common import (
    EXIT_DIVERGED,
    calib_option,
    console,
    data_dir_option,
    device_option,
    finetune_epochs_option,
    make_progress,
    n_option,
    out,
    out_option,
    seed_option,
    set_option,
    square_queries_option,
    threads_option,
    transfer_option,
    user_errors,
    with_flags,
)
from akd_edge.cli.progress import StepCallbacks
from akd_edge.cli.tables import models_table
from akd_edge.core.interval import REPORTED_N
from akd_edge.run.command import PipelineCallbacks

EXIT_CHECK_FAILED = 1
EXIT_INTERRUPTED = 130


class _Display(PipelineCallbacks):
    """One rich display: the stage (k of N) with its own bar below it, and a line as each stage ends."""

    def __init__(self) -> None:
        self.progress = make_progress()
        self.overall = self.progress.add_task("stages", total=None, info="")
        self.stage_task: Any = None
        self.bars: dict[str, Any] = {}
        self.train = StepCallbacks()
        self.train.progress = self.progress  # training bars share the display (rich allows one live display)

    def __enter__(self) -> _Display:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _clear(self) -> None:
        for task in (self.stage_task, *self.bars.values(), self.train.epoch_task, self.train.batch_task):
            if task is not None:
                self.progress.remove_task(task)
        self.stage_task, self.bars = None, {}
        self.train.epoch_task = self.train.batch_task = None

    def stage_start(self, index: int, total: int, stage: Any) -> None:
        self._clear()
        self.progress.update(
            self.overall, description=f"stage {index}/{total}: {escape(stage.title)}", total=total, completed=index - 1
        )
        self.stage_task = self.progress.add_task("  starting", total=None, info="")

    def stage_text(self, text: str) -> None:
        if self.stage_task is not None:
            self.progress.update(self.stage_task, description=f"  {escape(text)}")

    def stage_progress(self, label: str, done: int, total: int) -> None:
        if label not in self.bars:
            self.bars[label] = self.progress.add_task(f"  {escape(label)}", total=total, info="")
        self.progress.update(self.bars[label], completed=done)

    def stage_end(self, index: int, total: int, stage: Any, outcome: str, seconds: float = 0.0) -> None:
        self._clear()
        self.progress.update(self.overall, completed=index)
        mark = "[dim]skip[/]" if "skipped" in outcome else "[green]done[/]"
        self.progress.console.print(
            f"{mark} {index}/{total} {escape(stage.title)}: {escape(outcome)} [dim]({seconds:,.1f} s)[/]",
            highlight=False,
        )


@contextlib.contextmanager
def _quiet_unless_verbose() -> Iterator[None]:
    """The stages' own INFO lines repeat what the display shows: keep warnings only, unless -v was given."""
    verbose = click.get_current_context().find_root().params.get("verbose", False)
    logger = logging.getLogger("akd_edge")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def timing_table(timings: list[dict[str, Any]]) -> Table:
    """Each stage's wall time in this run (the report's rows, :func:`akd_edge.report.render.stage_rows`)."""
    from akd_edge.report.render import STAGE_HEADER, stage_rows

    table = Table(*STAGE_HEADER, title="wall time per stage")
    for row in stage_rows(timings):
        table.add_row(*(escape(cell) for cell in row))
    return table


@click.command("run")
@click.argument("recipe", metavar="RECIPE")
@click.option(
    "--prune",
    default="",
    metavar="RATIO[,RATIO...]",
    help="Also prune the student at each ratio (fraction of each layer's channels, e.g. 0.3,0.5) and fine-tune it.",
)
@click.option("--int8/--no-int8", default=True, show_default=True, help="Export and verify int8 students too.")
@click.option(
    "--teacher/--no-teacher",
    default=True,
    show_default=True,
    help="Export and verify the recipe's teachers (fp32) to compare the students with.",
)
@set_option()
@out_option("Pipeline folder", "<run.out_dir>/<run.name>-pipeline")
@finetune_epochs_option("--prune-epochs", "after pruning")
@n_option("that verify attacks (and compress compares on)", REPORTED_N, all_when_zero=False)
@square_queries_option("verify's Square")
@transfer_option()
@calib_option()
@device_option()
@data_dir_option("the recipe's data.data_dir")
@threads_option("torch and onnxruntime in compress and verify (run.threads sets distillation's)")
@seed_option("the attacks and the int8 calibration sample")
@user_errors
def run_cmd(
    recipe: str,
    prune: str,
    int8: bool,
    teacher: bool,
    overrides: tuple[str, ...],
    out_dir: str | None,
    prune_epochs: int,
    n: int,
    square_queries: int,
    transfer: str,
    calib: int,
    device: str | None,
    data_dir: str | None,
    threads: int,
    seed: int,
) -> None:
    """Distill RECIPE's student, prune it, export and verify every model, and write a report, in one go.

    Each stage is skipped when its output exists and its inputs (files by SHA-256, and settings) are those it
    was made from; a failed or killed stage leaves the finished ones as they are, and the same command
    continues with it (a distillation from its last checkpoint). A distillation run of the same recipe that
    `akd-edge distill` made is reused. The report (index.html, report.md) lands in the pipeline folder's
    report/. Verify dominates the time after training (Square and transfer on --n images per model, the
    teacher ten times the quickstart student's cost): --n 500 --square-queries 500 or --no-teacher for a
    first look.

    Exit status: 0 done, 1 an export failed its checks, 2 usage error, 3 the loss diverged, 130 Ctrl-C.

    \b
    Examples:
      akd-edge run fmnist-quickstart --prune 0.5
      akd-edge run fmnist-quickstart --prune 0.3,0.5 --no-int8 --set train.epochs=1 --n 500
    """
    import akd_edge
    from akd_edge.export import ExportCheckFailed
    from akd_edge.run import PipelineOptions, parse_ratios
    from akd_edge.train.stops import Diverged

    options = PipelineOptions(
        prune=parse_ratios(prune),
        int8=int8,
        teacher=teacher,
        prune_epochs=prune_epochs,
        n=n,
        square_queries=square_queries,
        transfer=transfer,
        calib=calib,
        seed=seed,
        threads=threads,
    )
    again = "run the same command again to continue where it stopped"
    try:
        with _quiet_unless_verbose(), _Display() as display:
            result = akd_edge.run(
                recipe,
                overrides=with_flags(overrides, device, data_dir),
                options=options,
                out=out_dir,
                callbacks=display,
            )
    except KeyboardInterrupt:
        console.print(f"[yellow]stopped.[/] Finished stages are kept; {again}.")
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
    except ExportCheckFailed as err:
        console.print(f"[bold red]export failed:[/] {escape(str(err))}; {again} once it is fixed", highlight=False)
        raise click.exceptions.Exit(EXIT_CHECK_FAILED) from None
    except Diverged as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        raise click.exceptions.Exit(EXIT_DIVERGED) from None
    from akd_edge.core.files import read_json_object

    report_dir = result["root"] + "/report"
    data = read_json_object(f"{report_dir}/report.json", "report")
    out.print(models_table(data, f"pipeline {result['root']}"))
    out.print(timing_table(result["timings"]))
    console.print(f"[green]report:[/] {escape(result['report'])} (and report.md)", highlight=False)
