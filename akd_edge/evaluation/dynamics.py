"""The training-dynamics report of ``akd-edge eval --dynamics``: one run analysed, or two compared.

The analysis itself is :mod:`akd_edge.metrics.forgetting`; this module reads the runs' ``dynamics.npz``,
writes ``dynamics.json``, ``dynamics_samples.npz`` and the plot, each atomically, into a folder that is
writable, locked while they are written, and holds no file of those names that akd-edge did not write.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from akd_edge.core.env import package_versions
from akd_edge.core.errors import UsageError
from akd_edge.core.files import output_folder, write_atomic, write_json_atomic

log = logging.getLogger(__name__)

DYNAMICS_FORMAT = "akd-edge-dynamics/1"
"""``format`` of dynamics.json."""


def evaluate_dynamics(
    runs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    late_fraction: float = 0.25,
    min_forgets: int = 2,
    plots: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Analyse the ``dynamics.npz`` of one run, or compare two (for example AT and AKD) set by set.

    Writes ``dynamics.json`` (and ``dynamics.png``) into ``out_dir`` (default: the first run directory),
    and ``dynamics_samples.npz``: per run and training sample, the learned epoch, the forgetting events and
    the set masks (keys ``RUN/RECORD/...``), in the order of the training split.
    """
    import numpy as np

    from akd_edge.metrics.forgetting import analyze, compare, load_dynamics, per_sample

    if names is not None and len(names) != len(runs):
        raise UsageError(f"--names gives {len(names)} labels for {len(runs)} runs")
    if len(runs) not in (1, 2):
        raise UsageError(f"--dynamics takes one run (analysis) or two runs (comparison), got {len(runs)}")
    records = [load_dynamics(run) for run in runs]
    first = Path(runs[0])
    labels = list(names) if names else [Path(run).resolve().name or str(run) for run in runs]
    if len(set(labels)) != len(labels):
        labels = [f"{label}-{i + 1}" for i, label in enumerate(labels)]
    if len(records) == 2:
        report = compare(
            records[0], records[1], names=(labels[0], labels[1]), late_fraction=late_fraction, min_forgets=min_forgets
        )
    else:
        report = {
            "names": labels,
            "summaries": {labels[0]: analyze(records[0], late_fraction=late_fraction, min_forgets=min_forgets)},
        }
    report = {"format": DYNAMICS_FORMAT, "runs": [str(r) for r in runs], **report, "versions": package_versions()}
    arrays = {
        f"{label}/{key}": value
        for label, record in zip(labels, records, strict=True)
        for key, value in per_sample(record, late_fraction=late_fraction, min_forgets=min_forgets).items()
    }
    default = first if first.is_dir() else first.parent
    with output_folder(
        out_dir, default, "dynamics.json", DYNAMICS_FORMAT, ("dynamics.png", "dynamics_samples.npz")
    ) as out:
        if plots:
            from akd_edge.evaluation import plots as plotting

            if plotting.matplotlib_available():
                report["plots"] = {"dynamics": plotting.plot_dynamics(report, out / "dynamics.png").name}
            else:
                log.warning(plotting.MISSING)
                report["plots"] = {"note": plotting.MISSING}
        write_atomic(out / "dynamics_samples.npz", lambda fh: np.savez_compressed(fh, **arrays))
        report["samples"] = "dynamics_samples.npz"
        return report, write_json_atomic(out / "dynamics.json", report)
