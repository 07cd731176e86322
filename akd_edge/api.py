"""The Python API: every CLI command as a function, with models and datasets as objects in and out.

Made for notebooks and scripts::

    import akd_edge as ae

    student, summary = ae.distill("fmnist-quickstart", overrides=["train.epochs=1"], run_dir="runs/nb")
    results = ae.evaluate(student, ae.load_test_data("fashion-mnist", n=500), eps=0.1, attacks=["pgd"])
    folder, report = ae.export("runs/nb")
    verified = ae.verify(folder, n=200)
    model = ae.load_model("runs/nb")  # the early-stopped student, in eval mode, for your own code

The functions leave process-wide state as they found it: torch's thread count (``threads`` applies to the
call only), the global random state (every call runs in a forked RNG, so the caller's stream is not
advanced or reseeded) and signal handlers (Ctrl-C raises KeyboardInterrupt as usual; the run's last
checkpoint stays and ``resume=True`` continues it). They log through ``logging`` and print nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from akd_edge.config import Recipe
    from akd_edge.data import DatasetSplits, ImageDataset

__all__ = [
    "compress",
    "distill",
    "evaluate",
    "export",
    "load_data",
    "load_model",
    "load_test_data",
    "train_teacher",
    "verify",
]


@contextlib.contextmanager
def _isolated(threads: int) -> Iterator[None]:
    """Thread count for the block only, and the caller's RNG state (CPU and CUDA) put back afterwards."""
    import torch

    from akd_edge.core.env import torch_threads

    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch_threads(threads), torch.random.fork_rng(devices=devices):
        yield


def _recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str]) -> Recipe:
    from akd_edge.config import Recipe, load_recipe, to_dict

    if isinstance(recipe, Recipe):
        return load_recipe(to_dict(recipe), list(overrides)) if overrides else recipe
    return load_recipe(recipe, list(overrides))


def _train(
    recipe: str | Path | dict[str, Any] | Recipe,
    role: str,
    *,
    overrides: Sequence[str],
    run_dir: str | Path | None,
    resume: bool,
    data: DatasetSplits | None,
    teacher: nn.Module | None,
    threads: int,
    callbacks: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    from akd_edge.models.checkpoint import load_model
    from akd_edge.train.loop import train_run
    from akd_edge.train.rundir import claim_run_dir, open_run_dir

    cfg = _recipe(recipe, overrides)
    with _isolated(threads or cfg.run.threads):
        claimed = open_run_dir(run_dir) if resume and run_dir is not None else claim_run_dir(cfg, run_dir)
        with claimed:
            summary = train_run(cfg, claimed, resume=resume, role=role, data=data, teacher=teacher, callbacks=callbacks)
        own = cfg.model.name if ":" in cfg.model.name else None  # the recipe's own module:factory, trusted
        model, _ = load_model(claimed.path, "best", factory=own)
    return model, summary


def distill(
    recipe: str | Path | dict[str, Any] | Recipe = "fmnist-quickstart",
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    data: DatasetSplits | None = None,
    teacher: nn.Module | None = None,
    threads: int = 0,
    callbacks: Any = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Distill a student as ``recipe`` says (a shipped name, a TOML path, a dict or a :class:`Recipe`).

    ``overrides`` are ``section.key=value`` strings, as ``--set`` takes. ``data`` (from :func:`load_data`
    or your own :class:`DatasetSplits`) and ``teacher`` (any module that returns logits for images in
    [0, 1], or a ``TeacherEnsemble``; it is frozen and moved to the run's device) replace the recipe's.
    ``run_dir`` defaults to ``<run.out_dir>/<run.name>[-N]``; ``resume=True`` continues it. Returns the
    early-stopped student (``best.pt``, in eval mode, on the CPU) and the run's summary. ``callbacks``
    (optional) receive the training loop's progress events, as :class:`~akd_edge.train.loop.Trainer` calls them.
    """
    return _train(
        recipe,
        "student",
        overrides=overrides,
        run_dir=run_dir,
        resume=resume,
        data=data,
        teacher=teacher,
        threads=threads,
        callbacks=callbacks,
    )


def train_teacher(
    recipe: str | Path | dict[str, Any] | Recipe = "fmnist-teacher",
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    data: DatasetSplits | None = None,
    threads: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Adversarially train a teacher (AT or TRADES); returns the early-stopped model and the summary."""
    from akd_edge.core.errors import ConfigError

    cfg = _recipe(recipe, overrides)
    if cfg.method.name not in ("at", "trades"):
        raise ConfigError(f"method.name={cfg.method.name!r}: a teacher trains with at or trades")
    return _train(
        cfg, "teacher", overrides=(), run_dir=run_dir, resume=resume, data=data, teacher=None, threads=threads
    )


def load_data(recipe: str | Path | dict[str, Any] | Recipe = "fmnist-quickstart", overrides: Sequence[str] = ()):
    """The train/validation/test splits a recipe's ``[data]`` section describes (a :class:`DatasetSplits`)."""
    from akd_edge.data import load_dataset

    cfg = _recipe(recipe, overrides)
    return load_dataset(cfg.data, cfg.run.seed)


def load_test_data(name: str = "fashion-mnist", data_dir: str = "", n: int = 0) -> ImageDataset:
    """The first ``n`` (0 = all) test images of a dataset by name, as an :class:`ImageDataset`."""
    from akd_edge.data import load_test_split

    dataset, _ = load_test_split(name, data_dir, n=n)
    return dataset


def load_model(
    source: str | Path, *, which: str = "best", device: str = "cpu", factory: str | None = None
) -> nn.Module:
    """A trained model from a run directory, a checkpoint file or ``builtin:fmnist-teacher``, in eval mode.

    It takes float32 images NCHW in [0, 1] (normalisation is inside) and returns logits. ``which``: a run
    directory's ``best`` (early-stopped), ``last`` or an epoch number; a pruned student is rebuilt from its
    pruning history. ``factory``: the trusted ``module:factory`` of a checkpoint of your own architecture
    (importing it runs its code). A missing or damaged checkpoint raises
    :class:`~akd_edge.core.errors.CheckpointError`.
    """
    from akd_edge.models.checkpoint import load_model as load_checkpoint_model

    model, _ = load_checkpoint_model(source, which, device=device, factory=factory)
    return model


def evaluate(
    model: nn.Module | str | Path,
    data: ImageDataset | None = None,
    *,
    eps: float | None = None,
    norm: str | None = None,
    attacks: Sequence[str] = ("pgd",),
    threads: int = 0,
    **options: Any,
) -> dict[str, Any]:
    """Clean and robust accuracy (each with its attack settings), calibration and model checks.

    ``model`` is a module (then ``data``, ``eps`` and ``norm`` are required) or a run directory /
    checkpoint (then its test split and threat model are the defaults, as in ``akd-edge eval``). Other
    keyword arguments are :class:`~akd_edge.evaluation.command.EvalOptions` fields (``n``, ``steps``,
    ``restarts``, ``seed``, ``batch_size``, ``device``...). Returns the ``results`` of eval.json; writes
    nothing.
    """
    import numpy as np

    from akd_edge.evaluation.command import EvalOptions, attack_specs, load_eval_data, resolve_threat
    from akd_edge.evaluation.engine import evaluate_dataset
    from akd_edge.models.checkpoint import load_model

    opts = EvalOptions(attacks=tuple(attacks), norm=norm, eps=eps, plots=False, **options)
    with _isolated(threads):
        if isinstance(model, (str, Path)):
            model, meta = load_model(model, opts.which, opts.device, opts.factory)
            norm, eps = resolve_threat(meta, norm, eps)
            if data is None:
                data, _ = load_eval_data(meta, opts)
        elif data is None or eps is None or norm is None:
            from akd_edge.core.errors import UsageError

            raise UsageError("evaluating a model object needs data (an ImageDataset), eps and norm")
        if opts.n and len(data) > opts.n:
            data = data.subset(np.arange(opts.n))
        specs, base = attack_specs(opts, norm, eps)
        model = model.to(opts.device)
        evaluation = evaluate_dataset(
            model,
            data,
            specs,
            batch_size=opts.batch_size,
            device=opts.device,
            curve=list(opts.eps_curve),
            curve_spec=base,
            calibration=opts.calibration,
            checks=opts.checks,
            check_samples=opts.check_samples,
        )
    return evaluation.results


def compress(
    source: str | Path, *, ratio: float | None = None, threads: int = 0, **options: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """Prune a run's student (``ratio``, or ``target_params``/``target_macs``) and fine-tune it robustly.

    Keyword arguments are :class:`~akd_edge.compress.prune.PruneSpec` fields and those of
    :func:`~akd_edge.compress.command.compress_run` (``out``, ``epochs``, ``overrides``, ``device``...).
    Returns the pruned model (reloaded from its checkpoint, in eval mode) and the compress report.
    """
    import dataclasses

    from akd_edge.compress.command import compress_run
    from akd_edge.compress.prune import PruneSpec
    from akd_edge.models.checkpoint import load_model

    spec_fields = {f.name for f in dataclasses.fields(PruneSpec)}
    spec = PruneSpec(ratio=ratio, **{k: v for k, v in options.items() if k in spec_fields})
    with _isolated(threads):
        report = compress_run(source, spec, **{k: v for k, v in options.items() if k not in spec_fields})
        model, _ = load_model(report["out"], "best", factory=options.get("factory"))
    return model, report


def export(source: str | Path, out: str | Path | None = None, **options: Any) -> tuple[Path, dict[str, Any]]:
    """Export a run directory or checkpoint to ONNX fp32 (+ int8 and .ort): the folder and its report.

    Keyword arguments as :func:`~akd_edge.export.export_checkpoint` (``int8``, ``calib``, ``n_test``...).
    """
    from akd_edge.export import export_checkpoint

    with _isolated(0):
        return export_checkpoint(source, out, **options)


def verify(folder: str | Path, **options: Any) -> dict[str, Any]:
    """Attack the exported ONNX files under onnxruntime; returns the report's ``verify`` section.

    Keyword arguments as :func:`~akd_edge.verify.command.verify_export` (``n``, ``eps``, ``data``...).
    """
    from akd_edge.verify.command import verify_export

    with _isolated(0):
        return verify_export(folder, **options)
