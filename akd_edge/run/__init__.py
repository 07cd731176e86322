"""``akd-edge run``: recipe to verified artifacts and a report in one command, resumable stage by stage.

:func:`run_pipeline` plans the stages (:mod:`~akd_edge.run.plan`), takes the run's folder
(:mod:`~akd_edge.run.root`), and runs each stage through the Python API unless
:mod:`~akd_edge.run.ledger` says its output is current (:mod:`~akd_edge.run.command`).
"""

from akd_edge.run.command import PipelineCallbacks, run_pipeline
from akd_edge.run.plan import PipelineOptions, Stage, parse_ratios, plan_stages

__all__ = ["PipelineCallbacks", "PipelineOptions", "Stage", "parse_ratios", "plan_stages", "run_pipeline"]
