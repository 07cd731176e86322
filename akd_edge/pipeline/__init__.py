"""``akd-edge run``: recipe to verified artifacts and a report in one command, resumable stage by stage.

:func:`run_pipeline` plans the stages (:mod:`~akd_edge.pipeline.plan`), takes the pipeline folder
(:mod:`~akd_edge.pipeline.root`), and runs each stage through the Python API unless
:mod:`~akd_edge.pipeline.state` says its output is current (:mod:`~akd_edge.pipeline.runner`).
"""

from akd_edge.pipeline.plan import PipelineOptions, Stage, parse_ratios, plan_stages
from akd_edge.pipeline.runner import PipelineCallbacks, run_pipeline

__all__ = ["PipelineCallbacks", "PipelineOptions", "Stage", "parse_ratios", "plan_stages", "run_pipeline"]
