"""Progress of a long command: rich bars on a terminal, and a plain line per tenth of each task elsewhere.

Off a terminal (output redirected to a file, CI) rich draws no bars, so a run of ten minutes would print
nothing between its stages: :class:`TaskProgress` prints one line each time a task passes another
:data:`LINES_PER_TASK`-th of its total instead (the stages themselves are logged by the library), and the
training loop's callbacks (:class:`RichCallbacks`, :class:`StepCallbacks`) a line every tenth of an epoch.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console

from akd_edge.cli.common import console, make_progress

LINES_PER_TASK = 10
"""Off a terminal, how many lines a task prints from start to end."""


class TaskProgress:
    """A stage line and one bar per named task (``advance(name, done, total)``), or plain lines off a terminal."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.tty = console.is_terminal
        self.bars = make_progress(transient=True) if self.tty else None
        self.tasks: dict[str, int] = {}
        self.printed: dict[str, int] = {}
        self.start = time.monotonic()

    def __enter__(self) -> TaskProgress:
        if self.bars is not None:
            self.bars.__enter__()
            self.tasks[""] = self.bars.add_task(self.title, total=None, info="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self.bars is not None:
            self.bars.__exit__(kind, error, trace)

    def stage(self, text: str) -> None:
        """The current stage, as the first bar's text (off a terminal the library's log line says it)."""
        if self.bars is not None:
            self.bars.update(self.tasks[""], description=text)

    def advance(self, name: str, done: int, total: int) -> None:
        """Task ``name`` has done ``done`` of ``total`` steps."""
        if self.bars is not None:
            if name not in self.tasks:
                self.tasks[name] = self.bars.add_task(name, total=total, info="")
            self.bars.update(self.tasks[name], completed=done, total=total)
            return
        step = max(1, -(-total // LINES_PER_TASK))
        reached = done // step if done < total else LINES_PER_TASK
        if reached > self.printed.get(name, 0):
            self.printed[name] = reached
            elapsed = time.monotonic() - self.start
            self.console.print(
                f"{self.title}: {name} {done}/{total} ({100 * done / max(total, 1):.0f}%), {elapsed:.0f} s elapsed",
                highlight=False,
                markup=False,
            )


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


class StepCallbacks(RichCallbacks):
    """Training progress bars that start afresh for the fine-tuning of each pruning step (compress, run)."""

    def on_train_start(self, run_dir: Path, info: dict[str, Any]) -> None:
        for task in (self.epoch_task, self.batch_task):
            if task is not None:
                self.progress.remove_task(task)
        self.epoch_task = self.batch_task = None
        super().on_train_start(run_dir, info)
