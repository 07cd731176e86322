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

Each ``akd-edge`` command calls its function here (``verify --replay`` :func:`replay`, ``eval --dynamics`` and
``--teacher-gap`` :func:`dynamics` and :func:`teacher_gap`; ``akd-edge run`` calls
:func:`akd_edge.run.run_pipeline`, which sits above this module and is built on its functions): the command
parses its flags, calls the function and renders what it returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from akd_edge.config import Recipe
    from akd_edge.data import DatasetSplits, ImageDataset
    from akd_edge.evaluation.command import EvalResults

__all__ = [
    "compress",
    "distill",
    "dynamics",
    "evaluate",
    "export",
    "load_data",
    "load_model",
    "load_test_data",
    "replay",
    "report",
    "teacher_gap",
    "train_teacher",
    "verify",
]

TEACHER_METHODS = ("at", "trades")
"""The objectives a teacher trains with (:func:`train_teacher`): adversarial training with no teacher of its own."""
DEFAULT_DISTILL_RECIPE = "fmnist-quickstart"
DEFAULT_TEACHER_RECIPE = "fmnist-teacher"


@contextlib.contextmanager
def _isolated(threads: int, what: str = "threads") -> Iterator[None]:
    """Thread count for the block only (``what`` names the setting in a refusal), and the caller's RNG state put
    back afterwards: the CPU's and, in a single process, every CUDA device's (under torchrun each rank's device
    state is the training loop's to keep, and no rank touches the other ranks' devices). Where torch cannot be
    imported (``verify`` on onnxruntime alone) there is no such state, and the block runs as it is."""
    from akd_edge.core.env import check_threads, torch_threads

    try:
        import torch
    except ImportError:
        check_threads(threads, what)
        yield
        return
    from akd_edge.core.distributed import current

    cuda = torch.cuda.is_available() and current() is None
    devices = list(range(torch.cuda.device_count())) if cuda else []
    with torch_threads(threads, what), torch.random.fork_rng(devices=devices):
        yield


def _recipe(recipe: str | Path | dict[str, Any] | Recipe, overrides: Sequence[str]) -> Recipe:
    from akd_edge.config import Recipe, load_recipe, to_dict

    if isinstance(recipe, Recipe):
        return load_recipe(to_dict(recipe), list(overrides)) if overrides else recipe
    return load_recipe(recipe, list(overrides))


def _run_recipe(
    recipe: str | Path | dict[str, Any] | Recipe | None,
    default: str,
    overrides: Sequence[str],
    resume_dir: str | Path | None,
    allow_code: bool,
) -> Recipe:
    """The recipe to train: ``recipe`` with ``overrides``; with none given, a resumed run's own recipe.toml
    (where only :data:`~akd_edge.train.rundir.RESUME_MAY_CHANGE` may be overridden) or ``default``."""
    if recipe is not None or resume_dir is None:
        return _recipe(default if recipe is None else recipe, overrides)
    from akd_edge.train.rundir import refuse_resume_changes, run_recipe

    refuse_resume_changes(resume_dir, overrides)
    return run_recipe(resume_dir, overrides, allow_code=allow_code)


def _train(
    recipe: Recipe,
    role: str,
    *,
    run_dir: str | Path | None,
    resume: bool,
    data: DatasetSplits | None,
    teacher: nn.Module | None,
    threads: int,
    callbacks: Any,
    save_on_ctrl_c: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """Hold the run directory (checked writable before any data loads; under torchrun rank 0 holds it), train
    in it, and load the early-stopped model."""
    from akd_edge.core.distributed import current
    from akd_edge.models.checkpoint import load_model
    from akd_edge.train.loop import train_run
    from akd_edge.train.rundir import hold_run_dir

    with _isolated(threads or recipe.run.threads, "threads" if threads else "run.threads"):
        held, path = hold_run_dir(recipe, run_dir, resume=resume, group=current())
        with held or contextlib.nullcontext():
            summary = train_run(
                recipe,
                held or path,
                resume=resume,
                role=role,
                data=data,
                teacher=teacher,
                callbacks=callbacks,
                save_on_ctrl_c=save_on_ctrl_c,
            )
        own = recipe.model.name if ":" in recipe.model.name else None  # the recipe's own module:factory, trusted
        model, _ = load_model(path, "best", factory=own)
    return model, summary


def distill(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    data: DatasetSplits | None = None,
    teacher: nn.Module | None = None,
    threads: int = 0,
    callbacks: Any = None,
    allow_code: bool = False,
    save_on_ctrl_c: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Distill a student as ``recipe`` says (a shipped name, a TOML path, a dict or a :class:`Recipe`).

    ``overrides`` are ``section.key=value`` strings, as ``--set`` takes. ``data`` (from :func:`load_data`
    or your own :class:`DatasetSplits`) and ``teacher`` (any module that returns logits for images in
    [0, 1], or a ``TeacherEnsemble``; it is frozen and moved to the run's device) replace the recipe's.
    ``run_dir`` defaults to ``<run.out_dir>/<run.name>[-N]``; ``resume=True`` continues it, as its recipe.toml
    says when ``recipe`` is None (``fmnist-quickstart`` is the default of a new run), where a
    ``module:factory`` needs ``allow_code``. Returns the early-stopped student (``best.pt``, in eval mode, on
    the CPU) and the run's summary. ``callbacks`` (optional) receive the training loop's progress events, as
    :class:`~akd_edge.train.loop.Trainer` calls them; ``save_on_ctrl_c`` makes Ctrl-C save a resumable
    checkpoint and raise :class:`~akd_edge.train.stops.Interrupted` (the handler is put back afterwards).
    """
    cfg = _run_recipe(recipe, DEFAULT_DISTILL_RECIPE, overrides, run_dir if resume else None, allow_code)
    return _train(
        cfg,
        "student",
        run_dir=run_dir,
        resume=resume,
        data=data,
        teacher=teacher,
        threads=threads,
        callbacks=callbacks,
        save_on_ctrl_c=save_on_ctrl_c,
    )


def train_teacher(
    recipe: str | Path | dict[str, Any] | Recipe | None = None,
    *,
    overrides: Sequence[str] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
    data: DatasetSplits | None = None,
    threads: int = 0,
    callbacks: Any = None,
    allow_code: bool = False,
    save_on_ctrl_c: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Adversarially train a teacher (AT or TRADES); returns the early-stopped model and the summary.

    Arguments as :func:`distill` takes them (``fmnist-teacher`` is the default recipe of a new run); a recipe
    whose method is not one of :data:`TEACHER_METHODS` is a ConfigError.
    """
    from akd_edge.core.errors import ConfigError

    cfg = _run_recipe(recipe, DEFAULT_TEACHER_RECIPE, overrides, run_dir if resume else None, allow_code)
    if cfg.method.name not in TEACHER_METHODS:
        raise ConfigError(f"method.name={cfg.method.name!r}: a teacher trains with {' or '.join(TEACHER_METHODS)}")
    return _train(
        cfg,
        "teacher",
        run_dir=run_dir,
        resume=resume,
        data=data,
        teacher=None,
        threads=threads,
        callbacks=callbacks,
        save_on_ctrl_c=save_on_ctrl_c,
    )


def load_data(
    recipe: str | Path | dict[str, Any] | Recipe = DEFAULT_DISTILL_RECIPE, overrides: Sequence[str] = ()
) -> DatasetSplits:
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
    out: str | Path | None = None,
    write: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    **options: Any,
) -> EvalResults:
    """Clean and robust accuracy (each with its attack settings), calibration and model checks.

    ``model`` is a module (then ``data``, ``eps`` and ``norm`` are required) or a run directory /
    checkpoint (then its test split and threat model are the defaults, as in ``akd-edge eval``). Other
    keyword arguments are :class:`~akd_edge.evaluation.command.EvalOptions` fields (``n``, ``steps``,
    ``restarts``, ``seed``, ``batch_size``, ``device``, ``plots``...). Returns the ``results`` of eval.json
    (an :class:`~akd_edge.evaluation.command.EvalResults`: a dict, which for a run or checkpoint also carries
    the whole record as ``.report``). Writes nothing, unless ``write`` or ``out``: then a run or checkpoint's
    eval.json (and plots) go into ``out`` (default: the run directory or the checkpoint's folder), and
    ``.path`` is eval.json's. ``progress(done, total, info)`` follows the attacked batches.
    """
    from akd_edge.core.errors import UsageError
    from akd_edge.evaluation.command import EvalOptions, EvalResults, resolve_threat, results_on
    from akd_edge.evaluation.command import evaluate as evaluate_checkpoint
    from akd_edge.models.checkpoint import load_model

    opts = EvalOptions(attacks=tuple(attacks), norm=norm, eps=eps, **options)
    source = isinstance(model, (str, Path))
    write = write or out is not None
    if write and not (source and data is None):
        raise UsageError("eval.json is written for a run directory or checkpoint, on its own test split")
    with _isolated(threads):
        if source and data is None:
            report, path = evaluate_checkpoint(model, opts, out_dir=out, write=write, progress=progress)
            return EvalResults(report["results"], report, path)
        if source:
            model, meta = load_model(model, opts.which, opts.device, opts.factory)
            norm, eps = resolve_threat(meta, norm, eps)
        elif data is None or eps is None or norm is None:
            raise UsageError("evaluating a model object needs data (an ImageDataset), eps and norm")
        results = results_on(model.to(opts.device), data, opts, norm, eps, progress)
    return EvalResults(results)


def teacher_gap(
    source: str | Path,
    *,
    eps: float | None = None,
    norm: str | None = None,
    attacks: Sequence[str] = ("pgd",),
    threads: int = 0,
    out: str | Path | None = None,
    **options: Any,
) -> tuple[dict[str, Any], Path]:
    """A distilled student (run directory or checkpoint) and its recipe's teachers, on the same images and attacks.

    Arguments as :func:`evaluate` takes them for a run (other keyword arguments are
    :class:`~akd_edge.evaluation.command.EvalOptions` fields). Writes ``teacher_gap.json`` into ``out`` (default:
    the run directory or the checkpoint's folder); returns its record (each model's scores and the gap in
    accuracy per evaluation) and its path. A student whose recipe records no teachers is a UsageError.
    """
    from akd_edge.evaluation.command import EvalOptions
    from akd_edge.evaluation.teacher_gap import teacher_gap as evaluate_gap

    opts = EvalOptions(attacks=tuple(attacks), norm=norm, eps=eps, **options)
    with _isolated(threads):
        return evaluate_gap(source, opts, out_dir=out)


def dynamics(
    runs: Sequence[str | Path],
    *,
    names: Sequence[str] | None = None,
    out: str | Path | None = None,
    plots: bool = True,
    **options: Any,
) -> tuple[dict[str, Any], Path]:
    """The training dynamics of one run (its ``dynamics.npz``), or two compared set by set (AT against AKD...).

    ``names`` label the runs (default: their folders' names). Writes ``dynamics.json``, ``dynamics_samples.npz``
    and, with ``plots``, ``dynamics.png`` into ``out`` (default: the first run directory); returns the record and
    its path. Other keyword arguments as :func:`~akd_edge.evaluation.dynamics.evaluate_dynamics` takes them
    (``late_fraction``, ``min_forgets``). Reads saved records only: no model runs, torch is not needed.
    """
    from akd_edge.evaluation.dynamics import evaluate_dynamics

    return evaluate_dynamics(runs, names=names, out_dir=out, plots=plots, **options)


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


def verify(folder: str | Path, *, factory: str | None = None, **options: Any) -> dict[str, Any]:
    """Attack the exported ONNX files under onnxruntime; returns the report's ``verify`` section.

    Keyword arguments as :func:`~akd_edge.verify.command.verify_exports` (``n``, ``eps``, ``data``, ``threads``,
    ``on_stage``, ``on_progress``...). ``factory``: the trusted ``module:factory`` that rebuilds a transfer
    checkpoint of your own architecture (importing it runs its code). Without torch installed, only
    ``square_queries=0, transfer="none"`` runs (clean accuracy and latency).
    """
    from akd_edge.verify.command import verify_export

    with _isolated(0), _trusting(factory):
        return verify_export(folder, **options)


def _trusting(factory: str | None) -> contextlib.AbstractContextManager[None]:
    """Let verify's torch side rebuild the transfer checkpoint with ``factory`` (torch imported only then)."""
    if factory is None:
        return contextlib.nullcontext()
    from akd_edge.verify.transfer import trusting_factory

    return trusting_factory(factory)


def replay(
    folder: str | Path, *, threads: int = 0, write: bool = True, on_stage: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Replay the worst-case examples the last :func:`verify` kept (replay.npz) on every other onnxruntime
    provider and optimisation level of this machine; returns report.json's ``verify.replay`` section, a result
    per runtime and model, and records it there unless ``write=False``.

    Attacks nothing and needs only onnxruntime. ``threads``: onnxruntime's threads (0: its default);
    ``on_stage(text)`` hears of each runtime as it starts.
    """
    from akd_edge.verify.command import replay_export

    return replay_export(folder, threads=threads, write=write, on_stage=on_stage)


def report(
    paths: Sequence[str | Path], out: str | Path = "report", *, title: str = "", stages: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """Compare the models of run directories, export folders and ``akd-edge run`` folders in one report.

    Writes ``index.html``, ``report.md``, ``report.json`` and the plots into ``out`` (missing, empty or an
    earlier report); returns what report.json holds. ``stages``: the wall times of an ``akd-edge run``, shown as
    a table. See :func:`akd_edge.report.command.build_report`.
    """
    from akd_edge.report.command import build_report

    return build_report(paths, out, title=title, stages=stages)
