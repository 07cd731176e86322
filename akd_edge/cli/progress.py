"""Progress of a long command: rich bars on a terminal, and a plain line per tenth of each task elsewhere.

Off a terminal (output redirected to a file, CI) rich draws no bars, so a run of ten minutes would print
nothing between its stages: :class:`TaskProgress` prints one line each time a task passes another
:data:`LINES_PER_TASK`-th of its total instead (the stages themselves are logged by the library).
"""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console

from akd_edge.cli.common import make_progress

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
