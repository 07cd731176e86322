"""Shared pieces of the CLI: the console, progress bars, and turning user mistakes into exit code 2."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from akd_edge.errors import UsageError

console = Console(stderr=True)
"""Progress, tables and messages go to stderr; stdout stays free for machine-readable output."""
out = Console()
"""Results (tables, summaries) that users may redirect."""


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )


def make_progress(transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time, ETA and a free-text field for loss/acc/speed."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=transient,
    )


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for commands: a UsageError becomes a one-line message and exit code 2, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            raise click.exceptions.Exit(2) from None

    return wrapper
