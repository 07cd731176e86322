"""akd-edge: robust compact models for the edge, via adversarial knowledge distillation.

The Python API (:mod:`akd_edge.api`) is importable from here; torch loads only when a function runs::

    import akd_edge as ae
    student, summary = ae.distill("fmnist-quickstart")

``ae.run`` (``akd-edge run``) is defined here, not in :mod:`akd_edge.api`: it is built on the API's functions
(:mod:`akd_edge.run` calls them stage by stage), so it sits on the floor above them.
"""

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akd_edge import api
from akd_edge.api import *  # noqa: F403  (the functions of api.__all__, listed once, there)
from akd_edge.core.package import ApiPackage
from akd_edge.core.version import __version__

if TYPE_CHECKING:
    from akd_edge.config import Recipe
    from akd_edge.run import PipelineCallbacks, PipelineOptions


def run(
    recipe: "str | Path | dict[str, Any] | Recipe",
    *,
    overrides: "list[str] | tuple[str, ...]" = (),
    out: "str | Path | None" = None,
    callbacks: "PipelineCallbacks | None" = None,
    options: "PipelineOptions | None" = None,
    **fields: Any,
) -> dict[str, Any]:
    """``akd-edge run``: distill, compress, export, verify and report, each stage skipped when its output is
    current; returns what each stage did and its wall time (``timings``).

    The stages' settings are :class:`~akd_edge.run.PipelineOptions` fields as keywords (``prune=(0.5,)``,
    ``int8=True``, ``n=1000``...) or one ``options`` object. See :func:`akd_edge.run.run_pipeline`.
    """
    from akd_edge.run import PipelineOptions, run_pipeline

    if options is not None and fields:
        raise TypeError(f"run(): give options= or its fields as keywords, not both (got {sorted(fields)})")
    chosen = options if options is not None else PipelineOptions(**fields)
    return run_pipeline(recipe, overrides=overrides, options=chosen, out=out, callbacks=callbacks)


sys.modules[__name__].__class__ = ApiPackage  # ae.compress stays the function when akd_edge.compress loads

__all__ = ["__version__", "run"]
__all__ += api.__all__  # the form linters and type checkers read as re-exporting api's names
