"""``akd-edge report``: read the folders, draw the plots, write ``index.html``, ``report.md`` and ``report.json``.

The output folder is akd-edge's own: it must be missing, empty, or an earlier report (marked ``report``);
anything else is refused before anything is read or written. Files are written atomically under the
folder's lock; files an earlier report wrote and this one does not (a reliability diagram of a model no
longer given) are removed, and nothing else is.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from akd_edge.core import files
from akd_edge.core.errors import UsageError
from akd_edge.report.collect import Collection, collect

log = logging.getLogger(__name__)

REPORT_KIND = "report"
"""The kind in the mark (:func:`akd_edge.core.files.mark`) of a report folder."""
FORMAT = "akd-edge-report/1"
"""``format`` of the report folder's report.json (``akd_edge.report.FORMAT``)."""
DATA_NAME = "report.json"
"""The collected figures, for machines (and for ``akd-edge run`` to tell whether the report is current)."""


def check_report_out(out: Path) -> None:
    """Refuse (UsageError, nothing touched) an ``out`` that is not missing, empty or an earlier report."""
    files.refuse_symlink(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a folder; choose another --out")
    if not out.exists():
        return
    names = {p.name for p in out.iterdir()} - {files.LOCK}
    if names and files.marked_kind(out) != REPORT_KIND:
        kind = files.marked_kind(out)
        what = f"an akd-edge {kind} folder" if kind else "a folder that akd-edge did not write"
        raise UsageError(
            f"--out {out} is {what} (only an empty folder or an earlier report is replaced); choose another --out"
        )


def _plots(collection: Collection, out: Path) -> dict[str, Any]:
    """PNG files in ``out`` (names fixed here, never taken from the input), or a note when matplotlib is missing."""
    from akd_edge.evaluation import plots

    if not plots.matplotlib_available():
        return {"note": plots.MISSING}
    written: dict[str, Any] = {}
    points = [
        {
            "label": m.label,
            "robust": m.robust,
            "robust_ci95": m.ci95.get("robust"),
            "bytes": m.bytes,
            "p50_ms": m.p50_ms,
            "precision": m.precision,
            "role": m.role,
            "pruned": m.pruned,
            "front_bytes": m.front_bytes,
            "front_p50_ms": m.front_p50_ms,
        }
        for m in collection.models
        if m.verified and m.robust is not None
    ]
    if points:
        written["pareto"] = plots.plot_pareto(points, out / "pareto.png").name
    if collection.curves:
        curves = {label: curve["points"] for label, curve in collection.curves.items()}
        threat_eps = [
            curve["threat_eps"] for curve in collection.curves.values() if curve.get("threat_eps") is not None
        ]
        written["eps_curve"] = plots.plot_eps_curve(curves, out / "eps_curve.png", threat_eps=threat_eps).name
    if collection.reliability:
        written["reliability"] = {
            label: plots.plot_reliability(diagrams, out / f"reliability-{index}.png").name
            for index, (label, diagrams) in enumerate(collection.reliability.items(), 1)
        }
    return written


def _plot_files(plots: dict[str, Any]) -> list[str]:
    names = [plots[key] for key in ("pareto", "eps_curve") if key in plots]
    return names + list(plots.get("reliability", {}).values())


_OWN_PLOT = re.compile(r"(pareto|eps_curve|reliability-[0-9]+)\.png")
"""The names of the PNGs ``_plots`` writes: the only files besides this run's that a report removes."""


def _remove_stale(out: Path, kept: set[str]) -> None:
    """Delete the plots an earlier report wrote that this one did not (by their fixed names, never a listed one)."""
    for path in out.iterdir():
        if path.name not in kept and _OWN_PLOT.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()


def build_report(
    paths: Sequence[str | Path],
    out: str | Path = "report",
    *,
    title: str = "",
    stages: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Write the report of the folders in ``paths`` into ``out``; returns the data written to report.json.

    ``paths``: run directories, compress outputs, export folders and the folders ``akd-edge run`` writes, in
    any mix. A folder that is none of these, or a broken file in one, is a UsageError naming it. ``stages``:
    the wall time of each stage of the ``akd-edge run`` that writes the report (see
    :func:`akd_edge.run.command.timing`), shown as a table.
    """
    out = Path(out)
    check_report_out(out)
    given = {str(Path(p).resolve()) for p in paths}
    if out.exists() and str(out.resolve()) in given:
        raise UsageError(f"--out {out} is one of the folders to report on; choose another --out")
    try:
        collection = collect(list(paths))  # every input is read (and refused) before the output is touched
    except OSError as err:
        raise UsageError(f"cannot read {err.filename or 'an input file'}: {err.strerror or err}") from None
    files.ensure_writable_dir(out, "--out")
    with files.FolderLock(out, "report folder"):
        check_report_out(out)
        files.remove_orphans(out)
        files.mark(out, REPORT_KIND)
        plots = _plots(collection, out)
        meta = {
            "title": title or "akd-edge report",
            "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "version": _version(),
            "stages": [dict(stage) for stage in stages],
        }
        from akd_edge.report.render import render_html, render_markdown

        written = [*_plot_files(plots), "index.html", "report.md", DATA_NAME]
        files.write_text_atomic(out / "report.md", render_markdown(collection, plots, meta))
        files.write_text_atomic(out / "index.html", render_html(collection, plots, out, meta))
        data = {
            "format": FORMAT,
            **meta,
            "sources": collection.sources,
            "models": [dataclasses.asdict(m) for m in collection.models],
            "curves": collection.curves,
            "reliability": collection.reliability,
            "plots": plots,
            "notes": collection.notes,
            "files": written,
        }
        files.write_json_atomic(out / DATA_NAME, data)
        _remove_stale(out, set(written))
    log.info("wrote %s", out / "index.html")
    return data


def _version() -> str:
    from akd_edge.core.version import __version__

    return __version__
