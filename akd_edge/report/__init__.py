"""``akd-edge report``: one page comparing every model of run directories and export folders.

:func:`build_report` reads the folders (:mod:`~akd_edge.report.collect`, all input untrusted), marks the
Pareto front of verified robust accuracy against size and latency (:mod:`~akd_edge.report.pareto`),
draws the plots (:mod:`akd_edge.evaluation.plots`) and writes ``index.html`` (self-contained), ``report.md`` and
``report.json`` (:mod:`~akd_edge.report.render`; the folder: :mod:`~akd_edge.report.command`).
"""

from akd_edge.report.command import DATA_NAME, FORMAT, build_report

__all__ = ["DATA_NAME", "FORMAT", "build_report"]
