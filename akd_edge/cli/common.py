"""Shared pieces of the CLI: the console, progress bars, the options several commands take (one help text
each), and turning user mistakes into exit code 2."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

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

from akd_edge.compress import FINETUNE_EPOCHS
from akd_edge.core.errors import UsageError
from akd_edge.core.files import DISK_FULL

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


EXIT_DIVERGED = 3
"""Exit code of a training run stopped because its loss or weights stopped being finite."""
DISK_FULL_EXIT = 1
"""Exit code of a command stopped by a full disk or quota: not a user mistake (2), but no traceback either."""


def disk_full_message(err: OSError) -> str:
    """The one line a full disk gets: what was being written, and that earlier results are still there."""
    where = f" {err.filename}" if err.filename else ""
    return f"disk full while writing{where}: free space and re-run (nothing earlier was removed)"


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for commands: a UsageError becomes a one-line message and exit code 2, a full disk (ENOSPC,
    EDQUOT) a one-line message and exit code 1, not a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except UsageError as err:
            console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
            raise click.exceptions.Exit(2) from None
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            console.print(f"[bold red]error:[/] {escape(disk_full_message(err))}", highlight=False)
            raise click.exceptions.Exit(DISK_FULL_EXIT) from None

    return wrapper


# -- options shared by several commands ---------------------------------------------------------------------
F = TypeVar("F", bound=Callable[..., Any])
Option = Callable[[F], F]


def with_flags(overrides: Sequence[str], device: str | None, data_dir: str | None) -> tuple[str, ...]:
    """The ``--set`` overrides plus those that ``--device`` and ``--data-dir`` stand for (``run.device``,
    ``data.data_dir``), for the commands that run a recipe."""
    extra = [f"run.device={json.dumps(device)}"] if device else []
    extra += [f"data.data_dir={json.dumps(data_dir)}"] if data_dir else []
    return (*overrides, *extra)


def device_option(default: str | None = None) -> Option:
    """``--device``; without a ``default`` the recipe's ``run.device`` applies."""
    where = "" if default else " [default: the recipe's run.device]"
    return click.option(
        "--device", default=default, show_default=default is not None, help=f"auto, cpu, cuda or cuda:N{where}."
    )


def data_dir_option(default: str) -> Option:
    """``--data-dir``; ``default`` says where the dataset is looked for without it."""
    return click.option(
        "--data-dir", type=click.Path(), default=None, help=f"Folder with the dataset files [default: {default}]."
    )


def _check_threads(ctx: click.Context, param: click.Parameter, value: int) -> int:
    from akd_edge.core.env import check_threads

    try:
        check_threads(value, "--threads")
    except UsageError as err:
        raise click.BadParameter(str(err), ctx, param) from None
    return value


def threads_option(runtimes: str = "torch") -> Option:
    """``--threads`` for the CPU threads of ``runtimes``, at most the machine's CPUs (more crashes OpenMP)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=0),
        default=0,
        callback=_check_threads,
        show_default=True,
        help=f"CPU threads of {runtimes} (0 = their default); 1 is often much faster for small models on a "
        "busy machine.",
    )


def out_option(what: str, default: str) -> Option:
    """``--out`` (parameter ``out_dir``): the folder ``what`` goes to, ``default`` without it."""
    return click.option(
        "--out", "out_dir", type=click.Path(file_okay=False), default=None, help=f"{what} [default: {default}]."
    )


def set_option(recipe: str = "the recipe") -> Option:
    """``--set`` (parameter ``overrides``): repeatable ``SECTION.KEY=VALUE`` overrides of ``recipe``."""
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help=f"Override a field of {recipe}, e.g. train.optim.lr=0.01 (repeatable).",
    )


def seed_option(what: str = "") -> Option:
    """``--seed``, of ``what`` where that needs saying."""
    return click.option(
        "--seed", type=int, default=0, show_default=True, help=f"Seed of {what}." if what else "Random seed."
    )


def n_option(what: str, default: int, *, name: str = "n", all_when_zero: bool = True) -> Option:
    """``-n``/``--n``: how many test images ``what`` uses (``0`` = all of them when ``all_when_zero``)."""
    return click.option(
        "-n",
        "--n",
        name,
        type=click.IntRange(min=0 if all_when_zero else 1),
        default=default,
        show_default=True,
        help=f"Test images {what}" + (" (0 = all)." if all_when_zero else "."),
    )


def square_queries_option(what: str = "the Square attack") -> Option:
    """``--square-queries``: the query budget of verify's Square attack."""
    return click.option(
        "--square-queries", default=1000, show_default=True, type=click.IntRange(min=0), help=f"Queries of {what}."
    )


def transfer_option(note: str = "") -> Option:
    """``--transfer``: the AutoAttack version run on the torch model for verify's transfer examples."""
    return click.option(
        "--transfer",
        type=click.Choice(["fast", "standard", "none"]),
        default="fast",
        show_default=True,
        help=f"AutoAttack version run on the torch model for verify's transfer examples{note}.",
    )


def calib_option() -> Option:
    """``--calib``: how many training images calibrate the int8 model."""
    return click.option(
        "--calib",
        default=512,
        show_default=True,
        type=click.IntRange(min=0),
        help="Training images that calibrate int8.",
    )


def finetune_epochs_option(flag: str, after: str) -> Option:
    """``--epochs`` of compress, ``--prune-epochs`` of run: robust fine-tuning epochs ``after`` pruning."""
    return click.option(
        flag,
        default=FINETUNE_EPOCHS,
        show_default=True,
        type=click.IntRange(min=0),
        help=f"Robust fine-tuning epochs {after} (0 = prune only).",
    )


def which_option(what: str = "Checkpoint of a run directory") -> Option:
    """``--which``: the checkpoint of a run directory."""
    return click.option("--which", default="best", show_default=True, help=f"{what}: best, last or an epoch number.")


def _check_factory(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    module, colon, attr = value.partition(":")
    if not (colon and module and attr and ":" not in attr):
        raise click.BadParameter(f"expected MODULE:FACTORY such as my_models:tiny_net, got {value!r}")
    return value


def model_factory_option(flag: str = "--model-factory", whose: str = "the checkpoint's", note: str = "") -> Option:
    """``--model-factory`` (or ``flag``): the trusted factory of a model of the user's own architecture."""
    return click.option(
        flag,
        metavar="MODULE:FACTORY",
        default=None,
        callback=_check_factory,
        help=f"Factory of {whose} own architecture (for a checkpoint whose model is named MODULE:FACTORY). "
        "This imports MODULE, which runs its code: pass only code you trust. Without it such a checkpoint "
        f"is refused.{note}",
    )


def allow_code_option(what: str = "a resumed run's recipe.toml") -> Option:
    """``--allow-code``: import the ``module:factory`` names that ``what`` gives (a file, not the user)."""
    return click.option(
        "--allow-code",
        is_flag=True,
        help=f"Import the MODULE:FACTORY models named in {what} (model.name, a teacher's factory). This runs "
        "that module's code: give it only for folders you trust. Without it such a name is refused.",
    )


def options(*decorators: Option) -> Option:
    """Apply several option decorators in the order given (the first is listed first in --help)."""

    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply
