"""``run_pipeline``: the stages of ``akd-edge run``, each skipped when its output is current.

Each stage reads the outputs of the ones before it and writes its own: distillation a run directory,
compression ``compress/<model>/`` (built in ``work/<model>/`` and moved into place when finished), export
``export/<model>/`` (built beside it by the exporter, published when its checks pass), verification the
``verify`` section of that folder's report.json, and the report ``report/``. A stage never deletes what an
earlier stage wrote, and replaces its own earlier output only with a finished new one, so a failure or a
kill leaves every finished stage as it was; the next run skips those (:mod:`akd_edge.run.ledger`) and
continues with the first one that did not finish (a distillation from its last checkpoint).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from akd_edge.config import Recipe, load_recipe, to_dict
from akd_edge.core import files
from akd_edge.core.errors import UsageError
from akd_edge.run.ledger import PIPELINE_FORMAT, PipelineState, digest
from akd_edge.run.plan import PipelineOptions, Stage, plan_stages
from akd_edge.run.root import (
    claim_root,
    clear_ours,
    comparable,
    find_run,
    publish_stage,
    resumed_recipe,
    teacher_digests,
    teacher_file,
)

log = logging.getLogger(__name__)


class PipelineCallbacks:
    """Progress of :func:`run_pipeline`; the CLI draws it, the library only calls these (they do nothing here)."""

    train: Any = None
    """Callbacks of the training loop (distillation and fine-tuning), or None."""

    def stage_start(self, index: int, total: int, stage: Stage) -> None: ...
    def stage_end(self, index: int, total: int, stage: Stage, outcome: str, seconds: float = 0.0) -> None: ...
    def stage_text(self, text: str) -> None: ...
    def stage_progress(self, label: str, done: int, total: int) -> None: ...


class _Pipeline:
    """One ``akd-edge run`` in its (locked) pipeline folder."""

    def __init__(self, recipe: Recipe, options: PipelineOptions, root: Path, callbacks: PipelineCallbacks) -> None:
        self.recipe, self.options, self.root, self.callbacks = recipe, options, root, callbacks
        self.state = PipelineState(root, to_dict(recipe))
        self.run_dir: Path | None = None
        self.sources: dict[str, tuple[str, str, str | None]] = {}
        """model -> (checkpoint, which, trusted factory) that its export reads."""
        self.folders: dict[str, Path] = {}
        """model -> its compress output or export folder, for the report."""
        self.exports: dict[str, Path] = {}
        self.timings: list[dict[str, Any]] = []
        """Each stage of this run that has ended: key, title, whether it ran, its wall time (see :func:`timing`)."""

    def timed(self, stage: Stage) -> tuple[str, float]:
        """Run ``stage``; record its wall time in this run's timings (saved in pipeline.json's ``extra.last_run``
        at once, so a killed run keeps them, unless every stage so far was skipped)."""
        start = time.perf_counter()
        outcome = getattr(self, stage.kind)(stage)
        seconds = time.perf_counter() - start
        self.timings.append(timing(stage, outcome, seconds, self.state.records.get(stage.key)))
        if any(entry["ran"] for entry in self.timings):  # a run with nothing to do writes nothing
            total = round(sum(entry["seconds"] for entry in self.timings), 2)
            self.state.extra["last_run"] = {"stages": self.timings, "seconds": total}
            self.state.save()
        return outcome, seconds

    def _skip(self, stage: Stage, inputs: str, output: Path) -> str | None:
        record = self.state.up_to_date(stage.key, inputs, output)
        return None if record is None else f"up to date (finished {record.finished}), skipped"

    # -- stages --------------------------------------------------------------------------------------------

    def distill(self, stage: Stage) -> str:
        from akd_edge import api

        digests = teacher_digests(self.recipe)
        inputs = digest({"format": PIPELINE_FORMAT, "recipe": comparable(self.recipe), "teachers": digests})
        record = self.state.records.get(stage.key)
        found = find_run(self.recipe, digests, Path(record.output) if record else None)
        start = time.perf_counter()
        if found is not None and found.finished:
            path, outcome = found.path, f"reused the finished run {found.path}"
            if skipped := self._skip(stage, inputs, path):
                self._use_run(stage, path)
                return skipped
        else:
            resume = found is not None
            self.callbacks.stage_text(f"resuming {found.path}" if found else "distilling")
            _, summary = api.distill(
                resumed_recipe(found.path, self.recipe) if found else self.recipe,
                run_dir=found.path if found else None,
                resume=resume,
                callbacks=self.callbacks.train,
            )
            path = Path(summary["run_dir"])
            outcome = f"{'resumed and finished' if resume else 'trained'} {path}"
        self._use_run(stage, path)
        self.state.finish(stage.key, inputs, path, ["best.pt"], time.perf_counter() - start)
        return outcome

    def _use_run(self, stage: Stage, path: Path) -> None:
        self.run_dir = path
        self.sources[stage.model] = (str(path / "best.pt"), "best", None)
        self.folders[stage.model] = path

    def compress(self, stage: Stage) -> str:
        from akd_edge import api
        from akd_edge.compress.command import EvalSpec

        assert self.run_dir is not None and stage.ratio is not None
        opts = self.options
        settings = {"ratio": stage.ratio, "epochs": opts.prune_epochs, "steps": opts.prune_steps, "n": opts.n}
        inputs = digest({"format": PIPELINE_FORMAT, "source": files.sha256_file(self.run_dir / "best.pt"), **settings})
        out = self.root / "compress" / stage.model
        self.sources[stage.model] = (str(out / "best.pt"), "best", None)
        self.folders[stage.model] = out
        if skipped := self._skip(stage, inputs, out):
            return skipped
        start = time.perf_counter()
        work = self.root / "work" / stage.model
        clear_ours(work, "compress")  # what a killed attempt left
        api.compress(
            str(self.run_dir),
            ratio=stage.ratio,
            steps=opts.prune_steps,
            out=work,
            epochs=opts.prune_epochs,
            evaluation=EvalSpec(n=opts.n, autoattack="none", seed=opts.seed),
            callbacks=self.callbacks.train,
            on_stage=self.callbacks.stage_text,
            threads=opts.threads,
        )
        publish_stage(work, out, "compress")
        _point_report_at(out, work)
        self.state.finish(stage.key, inputs, out, ["best.pt"], time.perf_counter() - start)
        return f"wrote {out}"

    def export(self, stage: Stage) -> str:
        from akd_edge import api

        if stage.teacher is not None:
            spec = stage.teacher
            self.sources[stage.model] = (spec.path, spec.which, spec.factory or None)
        checkpoint, which, factory = self.sources[stage.model]
        source_file = teacher_file(checkpoint, which)
        if source_file is None:
            raise UsageError(f"cannot find the checkpoint {checkpoint} to export")
        int8 = self.options.int8 and stage.teacher is None
        settings = {"int8": int8, "calib": self.options.calib, "seed": self.options.seed, "which": which}
        inputs = digest({"format": PIPELINE_FORMAT, "source": files.sha256_file(source_file), **settings})
        out = self.root / "export" / stage.model
        self.exports[stage.model] = out
        if skipped := self._skip(stage, inputs, out):
            return skipped
        start = time.perf_counter()
        _, report = api.export(
            checkpoint,
            out,
            which=which,
            int8=int8,
            calib=self.options.calib,
            seed=self.options.seed,
            on_stage=self.callbacks.stage_text,
            factory=factory,
        )
        written = sorted(name for name in report["files"] if name.endswith(".onnx"))
        self.state.finish(stage.key, inputs, out, written, time.perf_counter() - start)
        return f"wrote {out}" + ("" if int8 else " (fp32 only)")

    def verify(self, stage: Stage) -> str:
        from akd_edge import api
        from akd_edge.export.folder import ONNX_MODELS

        folder = self.exports[stage.model]
        models = {name: files.sha256_file(folder / name) for name in ONNX_MODELS if (folder / name).is_file()}
        opts = self.options
        settings = {"n": opts.n, "square_queries": opts.square_queries, "transfer": opts.transfer, "seed": opts.seed}
        inputs = digest({"format": PIPELINE_FORMAT, "files": models, **settings})
        if skipped := self._skip(stage, inputs, folder):
            return skipped
        start = time.perf_counter()
        verify = api.verify(
            folder,
            data_dir=self.recipe.data.data_dir,  # the recipe's, never the one the export folder records
            n=opts.n,
            square_queries=opts.square_queries,
            transfer=opts.transfer,
            seed=opts.seed,
            threads=opts.threads,
            on_stage=self.callbacks.stage_text,
            on_progress=self.callbacks.stage_progress,
        )
        self.state.finish(stage.key, inputs, folder, ["report.json"], time.perf_counter() - start)
        robust = {name: res.get("robust_acc") for name, res in verify["models"].items()}
        shown = ", ".join(
            f"{name} {100 * acc:.1f}%" if acc is not None else f"{name} n/a" for name, acc in robust.items()
        )
        return f"robust accuracy {shown}"

    def report(self, stage: Stage) -> str:
        from akd_edge import api
        from akd_edge.core.version import __version__

        paths = [*self.folders.values(), *self.exports.values()]
        read = {str(p): _hashes(p) for p in paths}
        inputs = digest({"format": PIPELINE_FORMAT, "version": __version__, "read": read})
        out = self.root / "report"
        if skipped := self._skip(stage, inputs, out):
            return skipped
        start = time.perf_counter()
        self.callbacks.stage_text("collecting the results and drawing the plots")
        api.report(paths, out, title=f"akd-edge run {self.recipe.run.name}", stages=self.timings)
        self.state.finish(stage.key, inputs, out, ["index.html", "report.md"], time.perf_counter() - start)
        return f"wrote {out / 'index.html'}"


def timing(stage: Stage, outcome: str, seconds: float, record: Any = None) -> dict[str, Any]:
    """One stage's wall time in this run; a skipped stage also carries the time it took when it last ran."""
    skipped = "skipped" in outcome
    entry = {"key": stage.key, "title": stage.title, "ran": not skipped, "seconds": round(seconds, 2)}
    if skipped and record is not None:
        entry["seconds_when_run"] = record.seconds
    return entry


def _hashes(folder: Path) -> dict[str, str]:
    """The SHA-256 of each file of ``folder`` the report reads: a change in any makes the report stage run again."""
    from akd_edge.report.collect import INPUT_FILES

    return {name: files.sha256_file(folder / name) for name in INPUT_FILES if (folder / name).is_file()}


def _point_report_at(out: Path, work: Path) -> None:
    """compress's report.json names the folder it was built in; name the one it now is in."""
    path = out / "report.json"
    report = files.read_json_object(path, "compress report")
    report["out"] = str(out)
    for step in report.get("steps") or []:
        if isinstance(step, dict) and isinstance(step.get("dir"), str):
            step["dir"] = step["dir"].replace(str(work), str(out), 1)
    files.write_json_atomic(path, report)


def run_pipeline(
    recipe: str | Path | dict[str, Any] | Recipe,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    options: PipelineOptions | None = None,
    out: str | Path | None = None,
    callbacks: PipelineCallbacks | None = None,
) -> dict[str, Any]:
    """Distill, compress, export, verify and report, as ``akd-edge run`` does; returns what each stage did.

    ``recipe`` and ``overrides`` as :func:`akd_edge.distill` takes them; ``out`` is the pipeline folder
    (default ``<run.out_dir>/<run.name>-pipeline``, see :mod:`akd_edge.run.root`). Run it again after a
    failure or a kill: finished stages are skipped. A stage's UsageError names the stage. ``timings`` holds
    each stage's wall time in this run (also in pipeline.json's ``extra.last_run`` and in the report).
    """
    if isinstance(recipe, Recipe):
        recipe = to_dict(recipe)
    cfg = load_recipe(recipe, list(overrides))
    options = options or PipelineOptions()
    callbacks = callbacks or PipelineCallbacks()
    stages = plan_stages(cfg, options)
    root, lock = claim_root(cfg, out)
    outcomes: dict[str, str] = {}
    try:
        pipeline = _Pipeline(cfg, options, root, callbacks)
        for index, stage in enumerate(stages, 1):
            callbacks.stage_start(index, len(stages), stage)
            try:
                outcomes[stage.key], seconds = pipeline.timed(stage)
            except UsageError as err:
                err.args = (f"{stage.title}: {err}",)
                raise
            callbacks.stage_end(index, len(stages), stage, outcomes[stage.key], seconds)
    finally:
        lock.release()
    return {
        "root": str(root),
        "run_dir": str(pipeline.run_dir),
        "exports": {name: str(path) for name, path in pipeline.exports.items()},
        "report": str(root / "report" / "index.html"),
        "stages": outcomes,
        "timings": pipeline.timings,
    }
