"""``akd-edge report``: one page that compares every model of run directories and export folders.

Exit status: 0 written, 2 a folder that is not one the report reads, or a broken file in one (one line
naming it). Nothing heavy is imported at module level.
"""

from __future__ import annotations

import click
from rich.markup import escape

from akd_edge.cli.common import console, out, user_errors
from akd_edge.cli.tables import models_table


@click.command("report")
@click.argument("paths", nargs=-1, required=True, type=click.Path(), metavar="PATH...")
@click.option(
    "--out",
    "out_dir",
    default="report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder of index.html, report.md, report.json and the PNGs (new, empty or an earlier report).",
)
@click.option("--title", default="", help="Title of the page [default: akd-edge report].")
@user_errors
def report_cmd(paths: tuple[str, ...], out_dir: str, title: str) -> None:
    """Compare the models of run directories, export folders and `akd-edge run` folders, in any mix.

    Writes a self-contained index.html (plots inline, nothing fetched from the network) and report.md: a table
    of every model (parameters, MACs, file size, p50 latency, clean / transfer / Square / worst-case robust
    accuracy under onnxruntime with the attack settings), the Pareto front of verified robust accuracy against
    size and against latency, eps-curves and reliability diagrams where `akd-edge eval` wrote them, and each
    model's provenance (recipe, teachers, SHA-256 of its files). Only a file whose SHA-256 still matches the
    one `akd-edge verify` recorded counts as verified.

    \b
    Examples:
      akd-edge report export/fmnist-quickstart export/fmnist-quickstart-pruned runs/fmnist-quickstart
      akd-edge report runs/fmnist-quickstart-pipeline --out report/
    """
    from akd_edge import api

    data = api.report(list(paths), out_dir, title=title)
    out.print(models_table(data, title or "akd-edge report"))
    console.print(f"[green]wrote[/] {escape(out_dir)}/index.html and report.md", highlight=False)
