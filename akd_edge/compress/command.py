"""``akd-edge compress``: prune in steps, fine-tune robustly after each, report.

The source run is only read. The output folder gets the ``compress`` mark (:func:`akd_edge.core.files.mark`);
``step-K/`` holds the fine-tuning run of step K, ``best.pt`` the final pruned model with its pruning
history, ``report.json`` the before/after comparison (measured by :mod:`akd_edge.compress.measure`). Which
folder may be the output is :mod:`akd_edge.compress.output`'s to say; the fine-tuning's recipe and objective are
:mod:`akd_edge.compress.finetune`'s.

Under torchrun (a process group joined by the caller) every rank prunes the same way, the fine-tuning runs
data-parallel (:mod:`akd_edge.train.loop`) and the measurements share their batches across the ranks; rank 0
alone claims the output folder and writes to it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from akd_edge.compress import FINETUNE_EPOCHS
from akd_edge.compress.finetune import finetune_recipe, objective_loss, trusted_teachers
from akd_edge.compress.measure import measure
from akd_edge.compress.output import claim_out
from akd_edge.compress.prune import PruneSpec, accumulate_gradients, conv_channels, prune_model, resolve_keep
from akd_edge.core.callbacks import StageFn
from akd_edge.core.distributed import Group, current, rank_device
from akd_edge.core.errors import CheckpointError, UsageError
from akd_edge.core.files import copy_atomic, mark, write_json_atomic
from akd_edge.core.interval import REPORTED_N
from akd_edge.models.pruned import pruning_record

log = logging.getLogger(__name__)

COMPRESS_REPORT_FORMAT = "akd-edge-compress/1"
"""``format`` of the report.json of a compress output folder."""


@dataclass(frozen=True)
class EvalSpec:
    """What the before/after comparison measures, on the first ``n`` test images.

    Both counts default to :data:`~akd_edge.core.interval.REPORTED_N`: on 200 images the 95% interval of an
    accuracy is about +-6 points, wider than the cost of a typical pruning step. Each accuracy in the report
    carries its 95% Wilson interval.
    """

    n: int = REPORTED_N
    """Test images for clean and PGD accuracy (0 = the whole test split)."""
    autoattack: str = "fast"
    """AutoAttack version (``fast``, ``standard``, ``square``) or ``none``."""
    aa_n: int = REPORTED_N
    """Test images attacked by AutoAttack (0 = all of the ``n``). Its cost dominates the comparison: five
    times that of the former default of 200 images, for intervals less than half as wide."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 0 or self.aa_n < 0:
            raise UsageError("--n and --aa-n must be >= 0 (0 = all)")
        if self.autoattack not in ("fast", "standard", "square", "none"):
            raise UsageError(f"--autoattack {self.autoattack!r}: use fast, standard, square or none")


class _Compression:
    """State of one ``compress_run``: the source model and recipe, the data, and the report being built."""

    def __init__(
        self,
        source: str | Path,
        spec: PruneSpec,
        *,
        which: str,
        out: str | Path | None,
        epochs: int,
        overrides: Sequence[str],
        device: str | None,
        evaluation: EvalSpec,
        callbacks: Any,
        on_stage: StageFn | None,
        factory: str | None = None,
        teacher_factory: str | None = None,
    ) -> None:
        from akd_edge.models.checkpoint import load_model

        self.group: Group | None = current()
        self.is_main = self.group is None or self.group.is_main
        if epochs < 0:
            raise UsageError(f"--epochs must be >= 0 (0 = prune without fine-tuning), got {epochs}")
        self.spec, self.evaluation, self.callbacks, self.on_stage = spec, evaluation, callbacks, on_stage
        self.epochs, self.overrides, self.which = epochs, list(overrides), which
        self.factory = factory
        self.timings = {"search_s": 0.0, "prune_s": 0.0, "finetune_s": 0.0}
        self.stage(f"loading {source}")
        self.model, self.meta = load_model(source, which, factory=factory)
        recipe_dict = self.meta.get("recipe")
        if not recipe_dict:
            raise CheckpointError(
                f"{self.meta['path']} has no recipe: compress fine-tunes with the recipe of the run that trained "
                "the model, so give a run directory (or checkpoint) written by akd-edge distill or train-teacher"
            )
        self.source_name = str(recipe_dict.get("run", {}).get("name") or Path(self.meta["path"]).parent.name)
        recipe_dict = trusted_teachers(recipe_dict, teacher_factory)
        recipe = finetune_recipe(recipe_dict, f"{self.source_name}-pruned", epochs, overrides, device)
        self.out_dir, self.lock = claim_out(out, recipe, self.source_name, self.group)
        try:
            self.recipe = finetune_recipe(recipe_dict, self.out_dir.name, epochs, overrides, device)
            self.device = rank_device(self.recipe.run.device, self.group)
            if self.is_main:
                mark(self.out_dir, "compress", source=str(self.meta["path"]))
        except BaseException:
            self.release()
            raise
        self.model.to(self.device)
        self.input_shape = tuple(int(v) for v in self.meta["arch"]["input_shape"])
        base = self.meta.get("pruning") or {}
        if base and list(base.get("example_shape", []))[1:] != list(self.input_shape):
            raise CheckpointError(f"{self.meta['path']}: its pruning history was traced for another input shape")
        self.base_history = list(base.get("history", []))
        resolve_keep(self.model, spec.keep)  # a bad --keep fails before any work
        self.record: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def stage(self, text: str) -> None:
        if self.on_stage is None:
            log.info(text)
        else:
            log.debug(text)
            self.on_stage(text)

    def load_data(self) -> None:
        import numpy as np

        from akd_edge.data import load_dataset

        self.stage(f"loading data ({self.recipe.data.name})")
        self.splits = load_dataset(self.recipe.data, self.recipe.run.seed)
        self.test = self.splits.test
        if self.evaluation.n and len(self.test) > self.evaluation.n:
            self.test = self.test.subset(np.arange(self.evaluation.n))

    def resolve_ratio(self) -> tuple[float, Any]:
        """The spec's ratio, or the one searched for its budget (with the search result)."""
        import time

        from akd_edge.compress.search import search_ratio

        if self.spec.target is None:
            assert self.spec.ratio is not None
            return self.spec.ratio, None
        metric, target = self.spec.target
        self.stage(f"searching the pruning ratio for at most {target:,} {metric}")
        start = time.perf_counter()
        search = search_ratio(
            self.model, self.input_shape, metric=metric, target=target, round_to=self.spec.round_to, keep=self.spec.keep
        )
        self.timings["search_s"] = time.perf_counter() - start
        self.stage(
            f"ratio {search.ratio:.3f}: {search.params:,} params, {search.macs:,} MACs (target {target:,} {metric})"
        )
        return search.ratio, search

    def measure(self, model: nn.Module) -> dict[str, Any]:
        """The before/after figures of ``model``; under torchrun the ranks share the attacked batches."""
        from akd_edge.evaluation.engine import sharded

        ev = self.evaluation
        with sharded(self.group):
            return measure(
                model,
                self.test,
                self.recipe.eval.attack,
                autoattack=ev.autoattack,
                aa_n=ev.aa_n,
                seed=ev.seed,
                batch_size=self.recipe.data.eval_batch_size,
            )

    def prune(self, ratio: float) -> None:
        """Prune in ``spec.steps`` steps; fine-tune after each one (unless ``epochs`` is 0)."""
        import time

        from akd_edge.models import model_info

        spec, settings = self.spec, {**self.spec.settings(), "ratio": ratio}
        taylor = (
            objective_loss(self.recipe, self.model, self.splits, self.device) if spec.importance == "taylor" else None
        )
        started = [time.perf_counter()]  # pruning time, fine-tuning excluded

        def before_step(k: int) -> None:
            self.stage(f"step {k}/{spec.steps}: pruning")
            if taylor is not None:
                accumulate_gradients(self.model, taylor, spec.taylor_batches)

        def after_step(k: int, history: list[list[Any]]) -> None:
            self.model.zero_grad(set_to_none=True)
            self.same_model_everywhere(k)
            self.timings["prune_s"] += time.perf_counter() - started[0]
            self.record = pruning_record(self.base_history + history, self.input_shape, settings)
            entry = {"step": k, "ratio": ratio * k / spec.steps, **model_info(self.model, self.input_shape)}
            if self.epochs:
                entry |= self.finetune(k, entry["params"])
            self.model.eval()
            self.steps.append(entry)
            started[0] = time.perf_counter()

        prune_model(
            self.model,
            self.input_shape,
            ratio,
            steps=spec.steps,
            round_to=spec.round_to,
            keep=spec.keep,
            importance=spec.importance,
            before_step=before_step,
            after_step=after_step,
        )

    def same_model_everywhere(self, k: int) -> None:
        """Under torchrun: check that every rank pruned to the same shapes, then give all of them rank 0's weights
        (importance scores computed on different GPUs may rank channels differently)."""
        if self.group is None:
            return
        shapes = [(name, tuple(t.shape)) for name, t in self.model.state_dict().items()]
        if any(theirs != shapes for theirs in self.group.all_gather(shapes)):
            raise UsageError(
                f"pruning step {k} gave the ranks differently shaped models (their importance scores differ); "
                f"prune with --importance l1, or without torchrun"
            )
        self.group.sync_weights(self.model)

    def finetune(self, k: int, params: int) -> dict[str, Any]:
        """Adversarial fine-tuning of step ``k`` in ``<out>/step-k``; continues from its best epoch."""
        import time

        from akd_edge.models.checkpoint import load_checkpoint
        from akd_edge.train.loop import train_run

        step_dir = self.out_dir / f"step-{k}"
        self.stage(f"step {k}/{self.spec.steps}: {params:,} params; robust fine-tuning in {step_dir}")
        start = time.perf_counter()
        role = str(self.meta.get("role") or "student")
        train_run(
            self.recipe,
            step_dir,
            role=role,
            callbacks=self.callbacks,
            model=self.model,
            ckpt_extra={"pruning": self.record},
        )
        self.timings["finetune_s"] += time.perf_counter() - start

        def read_best() -> dict[str, Any]:
            return load_checkpoint(step_dir, "best")

        best = read_best() if self.group is None else self.group.from_main(read_best)  # rank 0 wrote it
        self.model.load_state_dict(best["model"])
        return {"best_epoch": best["epoch"], "val": best["val"], "dir": str(step_dir)}

    def save(self) -> None:
        """``<out>/best.pt``: the last step's best, or (without fine-tuning) the pruned weights, validated."""
        import numpy as np

        from akd_edge.config import to_dict
        from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, save_atomic
        from akd_edge.train.rundir import write_recipe
        from akd_edge.train.validate import validate

        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            write_recipe(self.recipe, self.out_dir / "recipe.toml")
        if self.epochs:
            if self.is_main:
                copy_atomic(self.out_dir / f"step-{self.spec.steps}" / "best.pt", self.out_dir / "best.pt")
            return
        self.stage("validating the pruned model (no fine-tuning)")
        recipe, val_set = self.recipe, self.splits.val
        if recipe.eval.val_samples and len(val_set) > recipe.eval.val_samples:
            val_set = val_set.subset(np.arange(recipe.eval.val_samples))
        val = validate(
            self.model,
            val_set,
            recipe.eval.attack,
            batch_size=recipe.data.eval_batch_size,
            device=self.device,
            group=self.group,
        )
        if not self.is_main:
            return
        meta = self.meta
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "arch": meta["arch"],
            "data": meta.get("data", {}),
            "threat": meta.get("threat", {}),
            "role": meta.get("role") or "student",
            "recipe": to_dict(recipe),
            "epoch": 0,
            "val": val,
            "pruning": self.record,
        }
        save_atomic(ckpt, self.out_dir / "best.pt")

    def report(
        self,
        before: dict[str, Any],
        after: dict[str, Any],
        search: Any,
        pruned: nn.Module,
        channels_before: dict[str, int],
        total_s: float,
    ) -> dict[str, Any]:
        import time

        from akd_edge.config import to_dict

        recipe, attack, ev = self.recipe, self.recipe.eval.attack, self.evaluation
        return {
            "format": COMPRESS_REPORT_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "source": {
                "checkpoint": str(self.meta["path"]),
                "run": self.source_name,
                "which": self.which,
                "epoch": self.meta.get("epoch"),
            },
            "out": str(self.out_dir),
            "model": self.meta["arch"]["name"],
            "prune": {**self.record.get("settings", {}), "library": self.record.get("library")},
            "search": search.as_dict() if search is not None else None,
            "finetune": {
                "epochs_per_step": recipe.train.epochs if self.epochs else 0,
                "method": recipe.method.name,
                "teachers": [t.path for t in recipe.teachers],
                "optim": to_dict(recipe.train.optim),
                "attack": to_dict(recipe.train.attack),
                "overrides": self.overrides,
            },
            "evaluation": {
                "split": "test",
                "n": before["n"],
                "autoattack": ev.autoattack,
                "aa_n": after.get("aa_n", 0),
                "interval": "ci95: 95% Wilson score interval of each accuracy",
                "pgd": {
                    "norm": attack.norm,
                    "eps": attack.eps,
                    "steps": attack.steps,
                    "step_size": attack.resolved_step_size,
                },
                "seed": ev.seed,
                "device": str(self.device),
            },
            "before": before,
            "after": after,
            "steps": self.steps,
            "channels": {"before": channels_before, "after": conv_channels(pruned)},
            "time_s": {**self.timings, "total_s": total_s},
        }


def compress_run(
    source: str | Path,
    spec: PruneSpec,
    *,
    which: str = "best",
    out: str | Path | None = None,
    epochs: int = FINETUNE_EPOCHS,
    overrides: Sequence[str] = (),
    device: str | None = None,
    evaluation: EvalSpec | None = None,
    callbacks: Any = None,
    on_stage: StageFn | None = None,
    factory: str | None = None,
    teacher_factory: str | None = None,
) -> dict[str, Any]:
    """Prune a trained run's model, fine-tune it adversarially after each step, and compare before/after.

    The fine-tuning uses the source run's own recipe (objective, teachers, data), with ``train.epochs``
    set to ``epochs`` and ``overrides`` (``section.key=value``) applied; ``epochs=0`` prunes without
    fine-tuning. Writes ``<out>/step-K/`` (one training run per step), ``<out>/best.pt`` (the final
    pruned model, with its pruning history), ``recipe.toml`` and ``report.json``; returns the report.
    The source run is only read. ``callbacks`` are the training loop's (progress display).

    ``factory`` is the trusted ``module:factory`` of a model of your own architecture; ``teacher_factory``
    that of the fine-tuning teachers (the factories recorded in the checkpoint's recipe are not imported).
    """
    import time

    started = time.perf_counter()
    job = _Compression(
        source,
        spec,
        which=which,
        out=out,
        epochs=epochs,
        overrides=overrides,
        device=device,
        evaluation=evaluation or EvalSpec(),
        callbacks=callbacks,
        on_stage=on_stage,
        factory=factory,
        teacher_factory=teacher_factory,
    )
    try:
        return _compress(job, started)
    finally:
        job.release()


def _compress(job: _Compression, started: float) -> dict[str, Any]:
    """The stages of :func:`compress_run`, in the locked output folder."""
    import copy
    import time

    from akd_edge.models.checkpoint import load_model

    job.load_data()
    ratio, search = job.resolve_ratio()
    job.stage(f"measuring the unpruned model on {len(job.test)} test images")
    before = job.measure(job.model)
    channels_before = conv_channels(job.model)
    job.prune(ratio)
    job.save()
    job.stage(f"measuring the pruned model (reloaded from {job.out_dir / 'best.pt'})")
    if job.is_main:
        pruned, _ = load_model(job.out_dir, "best", job.device, job.factory)
    else:  # the same weights as rank 0 reloads (the files are rank 0's)
        pruned = copy.deepcopy(job.model).eval()
    after = job.measure(pruned)
    if search is not None and (after["params"], after["macs"]) != (search.params, search.macs):
        log.warning("the pruned model's counts differ from the search's: %s vs %s", after, search.as_dict())
    report = job.report(before, after, search, pruned, channels_before, time.perf_counter() - started)
    if job.is_main:
        write_json_atomic(job.out_dir / "report.json", report)
    return report
