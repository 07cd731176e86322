"""The `akd-edge` command group. Subcommands import their heavy dependencies only when they run."""

from __future__ import annotations

from pathlib import Path

import click
from rich.markup import escape
from rich.table import Column, Table

from akd_edge.cli.common import out, setup_logging, user_errors
from akd_edge.cli.compress_cmd import compress_cmd
from akd_edge.cli.eval_cmd import eval_cmd
from akd_edge.cli.export_cmd import export_cmd
from akd_edge.cli.report_cmd import report_cmd
from akd_edge.cli.run_cmd import run_cmd
from akd_edge.cli.train_cmd import distill, train_teacher
from akd_edge.cli.verify_cmd import verify_cmd
from akd_edge.core.version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="akd-edge")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """akd-edge: distill robust teachers into compact students, compress, export to ONNX, verify robustness.

    \b
    Typical workflow:
      akd-edge distill                      # AKD quickstart student from the shipped teacher
      akd-edge eval runs/fmnist-quickstart  # clean, PGD and AutoAttack accuracy, calibration
      akd-edge export runs/fmnist-quickstart
      akd-edge verify export/fmnist-quickstart
      akd-edge run fmnist-quickstart --prune 0.5   # all of the above (and pruning), then a report
    """
    setup_logging(verbose)


@cli.command("recipes")
@user_errors
def recipes_cmd() -> None:
    """List the shipped recipes and what they reached where they were measured."""
    from akd_edge.config import measured_summary, read_toml, recipe_results, shipped_recipes

    recipes = shipped_recipes()
    table = Table("description", "measured (test clean / PGD-20, time, where)")
    # the name is what users type: never cut or wrapped, whatever the terminal's width
    table.columns.insert(0, Column("recipe", no_wrap=True, min_width=max(map(len, recipes), default=6)))
    for name, path in recipes.items():
        result = recipe_results(name)
        raw = read_toml(path)
        # an unmeasured recipe's note says why and how to measure it; the listing keeps the why
        note = str(raw.get("expected", {}).get("note", "not measured yet")).split(";")[0]
        table.add_row(name, raw.get("description", ""), escape(measured_summary(result) if result else note))
    out.print(table)
    if recipes:
        folder = Path(next(iter(recipes.values()))).parent
        out.print(
            f"[dim]how each was measured, and how to measure the others: the \\[expected] note of "
            f"{escape(str(folder))}/NAME.toml[/]"
        )


@cli.command("models")
@click.option("--input-shape", default="1,28,28", show_default=True, help="C,H,W used to count MACs.")
@click.option("--num-classes", default=10, show_default=True)
@user_errors
def models_cmd(input_shape: str, num_classes: int) -> None:
    """List the registered architectures with parameter counts and MACs."""
    from akd_edge.core.errors import UsageError
    from akd_edge.models import describe_models

    try:
        shape = tuple(int(v) for v in input_shape.split(","))
        assert len(shape) == 3
    except (ValueError, AssertionError):
        raise UsageError(f"--input-shape {input_shape!r}: expected C,H,W such as 3,32,32") from None
    table = Table("model", "role", "params", "MACs", "description", title=f"input {shape}, {num_classes} classes")
    for row in describe_models(shape, num_classes):
        if "error" in row:  # the architecture cannot take this input shape
            table.add_row(row["name"], row["role"], "-", "-", f"[red]{escape(row['error'])}[/]")
        else:
            table.add_row(row["name"], row["role"], f"{row['params']:,}", f"{row['macs']:,}", row["description"])
    out.print(table)


@cli.command("methods")
def methods_cmd() -> None:
    """List the training objectives."""
    from akd_edge.methods import METHODS

    table = Table("method", "needs teacher", "description")
    for name in METHODS:
        table.add_row(name, "yes" if METHODS.get(name).needs_teacher else "no", METHODS.help(name))
    out.print(table)


@cli.command("datasets")
def datasets_cmd() -> None:
    """List the dataset names a recipe's data.name accepts."""
    from akd_edge.data import list_datasets

    table = Table("dataset", "description")
    for name, description in list_datasets():
        table.add_row(name, description)
    out.print(table)


cli.add_command(train_teacher)
cli.add_command(eval_cmd)
cli.add_command(compress_cmd)
cli.add_command(export_cmd)
cli.add_command(verify_cmd)
cli.add_command(distill)
cli.add_command(run_cmd)
cli.add_command(report_cmd)


def main() -> None:
    cli(prog_name="akd-edge")
