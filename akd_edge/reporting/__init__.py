"""``akd-edge report``: one page comparing every model of run directories and export folders.

:func:`build_report` reads the folders (:mod:`~akd_edge.reporting.collect`, all input untrusted), marks the
Pareto front of verified robust accuracy against size and latency (:mod:`~akd_edge.reporting.pareto`),
draws the plots (:mod:`akd_edge.plots`) and writes ``index.html`` (self-contained), ``report.md`` and
``report.json`` (:mod:`~akd_edge.reporting.render`, :mod:`~akd_edge.reporting.folder`).
"""

from akd_edge.reporting.folder import DATA_NAME, FORMAT, build_report

__all__ = ["DATA_NAME", "FORMAT", "build_report"]
