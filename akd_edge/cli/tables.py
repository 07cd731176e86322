"""Tables more than one command prints: the models of a report (``akd-edge report`` and ``akd-edge run``)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Column, Table

from akd_edge.core.interval import format_percent


def models_table(data: dict[str, Any], title: str) -> Table:
    """The report's models in short: size, latency, verified robust accuracy and the Pareto fronts."""
    table = Table("size", "p50 ms", "clean", "robust (worst case)", "Pareto front", title=title)
    table.columns.insert(0, Column("model", overflow="fold"))  # the whole name, wrapped, never cut
    for m in data["models"]:
        front = ", ".join(k for k, flag in (("size", m["front_bytes"]), ("latency", m["front_p50_ms"])) if flag)
        table.add_row(
            escape(m["label"]),
            f"{m['bytes'] / 1024:.1f} KiB" if m["bytes"] else "-",
            f"{m['p50_ms']:.3f}" if m["p50_ms"] is not None else "-",
            format_percent(m["accuracy"].get("clean"), 1),
            format_percent(m["accuracy"].get("robust"), 1) if m["verified"] else f"[yellow]{escape(m['status'])}[/]",
            front or "-",
        )
    return table
