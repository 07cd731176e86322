"""Structured channel pruning with torch-pruning, saved as a replayable history (never a pickled model).

A pruned model is stored as the original architecture's name plus the torch-pruning history: the list
of ``[module name, out-channel pruning?, channel indices]`` operations. :func:`rebuild_pruned` replays
that history on a freshly built model before its ``state_dict`` is loaded, so a pruned checkpoint loads
with ``torch.load(weights_only=True)`` like any other (as Torch-Pruning's own ``tests/test_load.py``).

Pruning is local: every prunable layer loses the same fraction of its output channels (the classifier
and any layer the user keeps are left alone), ranked by group magnitude (L2) or by first-order Taylor
importance of the adversarial training loss. Each layer keeps the multiple of ``round_to`` nearest to
the channel count the ratio asks for, so the pruned model maps onto SIMD/tensor-core kernels, and never
fewer than ``round_to`` channels. (torch-pruning alone rounds down after flooring, so 32 channels at
ratio 0.25 become 16, and it tries to remove a layer below ``round_to`` entirely, then skips it, so
channel counts jump back up as the ratio grows; either breaks the ratio search for a budget.)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from akd_edge.attacks import eval_mode
from akd_edge.errors import CheckpointError, UsageError

log = logging.getLogger(__name__)

FORMAT = "akd-edge-pruning/1"
"""Format tag of the ``pruning`` entry of a checkpoint."""
IMPORTANCES = ("magnitude", "taylor")
MAX_RATIO = 0.95
"""Largest pruning ratio accepted: at least 5% of each layer's channels survive."""


@dataclass(frozen=True)
class PruneSpec:
    """How to prune: exactly one of ``ratio``, ``target_params`` and ``target_macs``, and the settings."""

    ratio: float | None = None
    """Fraction of each prunable layer's channels to remove, in (0, 0.95]."""
    target_params: int | None = None
    """Parameter budget; the ratio is searched so the pruned model has at most this many."""
    target_macs: int | None = None
    """MAC budget of one image; the ratio is searched so the pruned model needs at most this many."""
    steps: int = 1
    """Iterative pruning steps (the ratio grows linearly to its final value); fine-tuning follows each."""
    importance: str = "magnitude"
    """``magnitude`` (group L2 norm) or ``taylor`` (|w * dL/dw| of the adversarial loss)."""
    round_to: int = 8
    """Channel counts become multiples of this (1 = no rounding)."""
    keep: tuple[str, ...] = ()
    """Module names (as in ``model.named_modules()``) never pruned, besides the classifier."""
    taylor_batches: int = 4
    """Training batches whose adversarial-loss gradients rank channels for ``taylor`` importance."""

    def __post_init__(self) -> None:
        given = [name for name in ("ratio", "target_params", "target_macs") if getattr(self, name) is not None]
        if len(given) != 1:
            what = "none of them" if not given else " and ".join(f"--{g.replace('_', '-')}" for g in given)
            raise UsageError(
                f"give exactly one of --ratio, --target-params and --target-macs (got {what}); "
                "for example --ratio 0.5 removes half of each layer's channels"
            )
        if self.ratio is not None and not 0 < self.ratio <= MAX_RATIO:
            raise UsageError(
                f"--ratio {self.ratio} is out of range: it is the fraction of channels removed, in (0, {MAX_RATIO}]"
            )
        for name in ("target_params", "target_macs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive count, got {value}")
        if self.steps < 1:
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance {self.importance!r}: use one of {', '.join(IMPORTANCES)}")
        if self.round_to < 1:
            raise UsageError(f"--round-to must be >= 1 (1 = no rounding), got {self.round_to}")
        if self.taylor_batches < 1:
            raise UsageError("taylor_batches must be >= 1")

    @property
    def target(self) -> tuple[str, int] | None:
        """``("params" | "macs", budget)`` when a budget is given, else None."""
        if self.target_params is not None:
            return "params", int(self.target_params)
        if self.target_macs is not None:
            return "macs", int(self.target_macs)
        return None

    def settings(self) -> dict[str, Any]:
        """Plain values (JSON and ``weights_only`` safe)."""
        return {
            "ratio": self.ratio,
            "target_params": self.target_params,
            "target_macs": self.target_macs,
            "steps": self.steps,
            "importance": self.importance,
            "round_to": self.round_to,
            "keep": list(self.keep),
        }


# ----------------------------------------------------------------------------------------------
# pruner construction


def _device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def example_input(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    """The tracing input of the dependency graph: one image of ``input_shape`` on the model's device."""
    return torch.zeros(1, *(int(v) for v in input_shape), device=_device(model))


def resolve_keep(model: nn.Module, names: Iterable[str]) -> list[nn.Module]:
    """The modules named by the user; a name may omit the ``net.`` prefix of the normalising wrapper."""
    import difflib

    modules = dict(model.named_modules())
    found = []
    for name in names:
        module = modules.get(name, modules.get(f"net.{name}"))
        if module is None or name == "":
            close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UsageError(
                f"--keep {name!r}: no such module in the model.{hint} Names are those of "
                "model.named_modules(), for example net.features.0"
            )
        found.append(module)
    return found


def ignored_layers(model: nn.Module, keep: Iterable[str] = ()) -> list[nn.Module]:
    """The classifier head plus the user's kept modules: torch-pruning removes none of their outputs."""
    from akd_edge.models import get_classifier

    return [get_classifier(model), *resolve_keep(model, keep)]


@functools.cache
def _pruner_class() -> type:
    """torch-pruning's BasePruner keeping each layer at the nearest multiple of ``round_to``, never below it."""
    import torch_pruning as tp

    class RoundedPruner(tp.pruner.BasePruner):
        def _round_to(self, n_pruned: int, current_channels: int, round_to: int) -> int:
            quotient, remainder = divmod(current_channels - n_pruned, round_to)
            keep = (quotient + (remainder > round_to / 2)) * round_to  # nearest multiple, ties prune more
            keep = min(max(keep, min(round_to, current_channels)), current_channels)
            return current_channels - keep

    if not hasattr(tp.pruner.BasePruner, "_round_to"):  # guard against a torch-pruning refactor
        log.warning("torch-pruning %s has no BasePruner._round_to; channel rounding uses its default", tp.__version__)
    return RoundedPruner


def make_pruner(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    ratio: float,
    steps: int = 1,
    importance: str = "magnitude",
    round_to: int = 8,
    keep: Iterable[str] = (),
) -> Any:
    """A torch-pruning pruner removing ``ratio`` of each layer's channels in ``steps`` calls to ``step()``.

    The dependency graph is traced in eval mode, so BatchNorm running statistics are left untouched.
    """
    import torch_pruning as tp

    if importance not in IMPORTANCES:
        raise UsageError(f"importance {importance!r}: use one of {', '.join(IMPORTANCES)}")
    scorer = (
        tp.importance.GroupTaylorImportance() if importance == "taylor" else tp.importance.GroupMagnitudeImportance(p=2)
    )
    with eval_mode(model), torch.enable_grad():
        return _pruner_class()(
            model,
            example_input(model, input_shape),
            importance=scorer,
            pruning_ratio=float(ratio),
            iterative_steps=int(steps),
            round_to=int(round_to),  # also 1: the override then keeps every layer at >= 1 channel
            ignored_layers=ignored_layers(model, keep),
        )


def accumulate_gradients(model: nn.Module, loss_fn: Callable[[], torch.Tensor], batches: int) -> None:
    """Fill ``.grad`` of every parameter with the sum of ``batches`` evaluations of ``loss_fn()`` (for Taylor)."""
    model.zero_grad(set_to_none=True)
    for _ in range(batches):
        loss_fn().backward()
    for param in model.parameters():  # torch-pruning's Taylor scores read .grad of every layer in a group
        if param.grad is None:
            param.grad = torch.zeros_like(param)


# ----------------------------------------------------------------------------------------------
# history: save and replay


def _plain_history(history: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """torch-pruning's history as plain lists of str/bool/int, safe for ``torch.load(weights_only=True)``.

    Entries that removed nothing (rounding can cancel a layer's step) are dropped: replaying them is a no-op.
    """
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history if len(idxs)]


def pruning_record(
    history: Iterable[Sequence[Any]], input_shape: Sequence[int], settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``pruning`` entry of a checkpoint: the history and what :func:`rebuild_pruned` needs to replay it."""
    import torch_pruning as tp

    return {
        "format": FORMAT,
        "library": f"torch-pruning {tp.__version__}",
        "example_shape": [1, *(int(v) for v in input_shape)],
        "history": _plain_history(history),
        "settings": dict(settings or {}),
    }


def rebuild_pruned(model: nn.Module, pruning: dict[str, Any]) -> nn.Module:
    """Replay a checkpoint's pruning history on a freshly built (unpruned) ``model``, in place; returns it."""
    import torch_pruning as tp

    if not isinstance(pruning, dict) or pruning.get("format") != FORMAT or "history" not in pruning:
        raise CheckpointError(
            f"the checkpoint's pruning entry is not an akd-edge pruning history (expected format {FORMAT!r})"
        )
    example = torch.zeros(*(int(v) for v in pruning["example_shape"]), device=_device(model))
    try:
        with eval_mode(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
            graph.load_pruning_history(_plain_history(pruning["history"]))
    except (AttributeError, IndexError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"cannot replay the pruning history on {type(model).__name__} ({err}); was the checkpoint pruned "
            f"from this architecture? It was pruned with {pruning.get('library', 'an unknown torch-pruning')}"
        ) from None
    return model


def prune_model(
    model: nn.Module,
    input_shape: Sequence[int],
    ratio: float,
    *,
    steps: int = 1,
    round_to: int = 8,
    keep: Iterable[str] = (),
    importance: str = "magnitude",
    before_step: Callable[[int], None] | None = None,
    after_step: Callable[[int, list[list[Any]]], None] | None = None,
) -> list[list[Any]]:
    """Prune ``model`` in place by ``ratio`` in ``steps`` steps; returns the (plain) history.

    ``before_step(k)`` runs before step k (1-based), for example to compute Taylor gradients;
    ``after_step(k, history)`` after it, for example to fine-tune.
    """
    pruner = make_pruner(
        model, input_shape, ratio=ratio, steps=steps, importance=importance, round_to=round_to, keep=keep
    )
    for k in range(1, steps + 1):
        if before_step is not None:
            before_step(k)
        pruner.step()
        history = _plain_history(pruner.pruning_history())
        if after_step is not None:
            after_step(k, history)
    return _plain_history(pruner.pruning_history())


def conv_channels(model: nn.Module) -> dict[str, int]:
    """Output channels of every convolution, by module name (for reports and tests)."""
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ----------------------------------------------------------------------------------------------
# measurements for the before/after report


def latency_ms(model: nn.Module, input_shape: Sequence[int], *, repeats: int = 30) -> float:
    """Median wall time (ms) of one forward pass on a single image, timed as ``akd-edge verify`` times."""
    from akd_edge.verify.runtime import measure_latency

    device = _device(model)

    def run(x: Any) -> torch.Tensor:
        with eval_mode(model), torch.inference_mode():
            out = model(torch.from_numpy(x).to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return measure_latency(run, tuple(input_shape), warmup=5, repeats=repeats, throughput_batch=0)["batch1_p50_ms"]


def autoattack_accuracy(
    model: nn.Module,
    dataset: Any,
    *,
    norm: str,
    eps: float,
    version: str = "fast",
    n: int = 200,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any] | None:
    """AutoAttack robust accuracy on the first ``n`` images of ``dataset``; None when it cannot run.

    The targeted attacks of ``fast`` and ``standard`` need at least 4 classes; with fewer the figure is
    skipped with a warning rather than failing the whole compression.
    """
    import numpy as np

    from akd_edge.attacks.autoattack import run_autoattack
    from akd_edge.data import iterate_batches

    subset = dataset.subset(np.arange(min(n, len(dataset)))) if n else dataset
    device = _device(model)
    batches = list(iterate_batches(subset, batch_size, device=device))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    with eval_mode(model), torch.no_grad():
        classes = model(x[:1]).shape[1]
    if classes < 4 and version in ("fast", "standard"):
        log.warning(
            "AutoAttack %s needs >= 4 classes (the model has %d): AutoAttack accuracy skipped", version, classes
        )
        return None
    _, per_attack = run_autoattack(model, x, y, norm=norm, eps=eps, version=version, seed=seed, batch_size=batch_size)
    robust = torch.stack(list(per_attack.values())).all(0)
    return {"aa_acc": float(robust.float().mean()), "aa_n": len(y), "aa_version": version}


def measure(
    model: nn.Module,
    dataset: Any,
    attack_cfg: Any,
    *,
    autoattack: str = "fast",
    aa_n: int = 200,
    seed: int = 0,
    batch_size: int = 250,
) -> dict[str, Any]:
    """Parameters, MACs, single-image latency, clean / PGD accuracy and (optionally) AutoAttack accuracy."""
    import time

    from akd_edge.models import model_info
    from akd_edge.train.validate import validate

    device = _device(model)
    start = time.perf_counter()
    result: dict[str, Any] = dict(model_info(model, dataset.input_shape))
    result["latency_ms"] = latency_ms(model, dataset.input_shape)
    fork = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(seed)  # the same PGD random starts before and after pruning
        val = validate(model, dataset, attack_cfg, batch_size=batch_size, device=device)
    result |= {"clean_acc": val["clean_acc"], "pgd_acc": val["robust_acc"], "n": val["n"]}
    result |= {"aa_acc": None, "aa_n": 0, "aa_version": None}
    if autoattack != "none":
        aa = autoattack_accuracy(
            model,
            dataset,
            norm=attack_cfg.norm,
            eps=attack_cfg.eps,
            version=autoattack,
            n=aa_n,
            seed=seed,
            batch_size=batch_size,
        )
        result |= aa or {}
    result["eval_s"] = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------
# the pipeline behind `akd-edge compress`: prune in steps, fine-tune robustly after each, report

REPORT_FORMAT = "akd-edge-compress/1"
Stage = Callable[[str], None]


@dataclass(frozen=True)
class EvalSpec:
    """What the before/after comparison measures, on the first ``n`` test images."""

    n: int = 1000
    """Test images for clean and PGD accuracy (0 = the whole test split)."""
    autoattack: str = "fast"
    """AutoAttack version (``fast``, ``standard``, ``square``) or ``none``."""
    aa_n: int = 200
    """Test images attacked by AutoAttack (its cost dominates; 0 = all of the ``n``)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 0 or self.aa_n < 0:
            raise UsageError("--n and --aa-n must be >= 0 (0 = all)")
        if self.autoattack not in ("fast", "standard", "square", "none"):
            raise UsageError(f"--autoattack {self.autoattack!r}: use fast, standard, square or none")


FINETUNE_LR_FACTOR = 0.2
"""Fine-tuning's peak learning rate as a fraction of the source run's."""


def _finetune_recipe(
    recipe_dict: dict[str, Any], name: str, epochs: int, overrides: Sequence[str], device: str | None
) -> Any:
    """The source run's recipe with the run renamed, ``train.epochs`` set, then the user's overrides.

    Fine-tuning starts from trained weights, so by default it uses a cosine schedule from a fifth of the
    source run's peak learning rate (``FINETUNE_LR_FACTOR``); ``--set train.optim.lr=...`` overrides it.
    """
    import json

    from akd_edge.config import load_recipe

    source_lr = recipe_dict.get("train", {}).get("optim", {}).get("lr", 0.1)
    head = [
        f"run.name={json.dumps(name)}",
        'train.optim.schedule="cosine"',
        f"train.optim.lr={source_lr * FINETUNE_LR_FACTOR!r}",
    ] + ([f"train.epochs={epochs}"] if epochs > 0 else [])
    tail = [f"run.device={json.dumps(device)}"] if device else []
    return load_recipe(recipe_dict, [*head, *overrides, *tail])


def _out_dir(out: str | Path | None, recipe: Any, source_name: str) -> Path:
    from dataclasses import replace

    from akd_edge.train.loop import new_run_dir

    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise UsageError(f"--out {path} already exists and is not an empty folder; choose another --out")
        return path
    renamed = replace(recipe, run=replace(recipe.run, name=f"{source_name}-pruned"))
    return new_run_dir(renamed)


def _taylor_loss(recipe: Any, model: nn.Module, splits: Any, device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure returning the training objective (e.g. AKD) on the next training batch, for Taylor scores."""
    from akd_edge.attacks import build_attack
    from akd_edge.data import iterate_batches
    from akd_edge.methods import METHODS
    from akd_edge.teachers import load_teachers

    method = METHODS.get(recipe.method.name)
    teacher = None
    if method.needs_teacher and recipe.teachers:
        teacher = load_teachers(recipe.teachers, device, splits.input_shape, splits.num_classes)
    task = method(model, build_attack(recipe.train.attack), recipe.method, teacher)
    state = {"epoch": 0, "batches": iter(())}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        for _ in range(2):
            for x, y, _ in state["batches"]:
                return x, y
            state["batches"] = iterate_batches(
                splits.train,
                recipe.data.batch_size,
                shuffle=True,
                seed=recipe.run.seed,
                epoch=state["epoch"],
                device=device,
            )
            state["epoch"] += 1
        raise UsageError("the training split is empty: Taylor importance needs training batches")

    def loss() -> torch.Tensor:
        x, y = next_batch()
        with eval_mode(model):  # BatchNorm statistics stay those of the trained model
            return task(x, y)["loss"]

    return loss


def _copy_atomic(src: Path, dst: Path) -> None:
    import os
    import shutil

    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


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
        on_stage: Stage | None,
    ) -> None:
        from akd_edge.train.checkpoint import load_model
        from akd_edge.train.loop import resolve_device

        if epochs < 0:
            raise UsageError(f"--epochs must be >= 0 (0 = prune without fine-tuning), got {epochs}")
        self.spec, self.evaluation, self.callbacks, self.on_stage = spec, evaluation, callbacks, on_stage
        self.epochs, self.overrides, self.which = epochs, list(overrides), which
        self.timings = {"search_s": 0.0, "prune_s": 0.0, "finetune_s": 0.0}
        self.stage(f"loading {source}")
        self.model, self.meta = load_model(source, which)
        recipe_dict = self.meta.get("recipe")
        if not recipe_dict:
            raise CheckpointError(
                f"{self.meta['path']} has no recipe: compress fine-tunes with the recipe of the run that trained "
                "the model, so give a run directory (or checkpoint) written by akd-edge distill or train-teacher"
            )
        self.source_name = str(recipe_dict.get("run", {}).get("name") or Path(self.meta["path"]).parent.name)
        recipe = _finetune_recipe(recipe_dict, f"{self.source_name}-pruned", epochs, overrides, device)
        self.out_dir = _out_dir(out, recipe, self.source_name)
        self.recipe = _finetune_recipe(recipe_dict, self.out_dir.name, epochs, overrides, device)
        self.device = resolve_device(self.recipe.run.device)
        self.model.to(self.device)
        self.input_shape = tuple(int(v) for v in self.meta["arch"]["input_shape"])
        base = self.meta.get("pruning") or {}
        if base and list(base.get("example_shape", []))[1:] != list(self.input_shape):
            raise CheckpointError(f"{self.meta['path']}: its pruning history was traced for another input shape")
        self.base_history = list(base.get("history", []))
        resolve_keep(self.model, spec.keep)  # a bad --keep fails before any work
        self.record: dict[str, Any] = {}
        self.steps: list[dict[str, Any]] = []

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
        ev = self.evaluation
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
            _taylor_loss(self.recipe, self.model, self.splits, self.device) if spec.importance == "taylor" else None
        )
        started = [time.perf_counter()]  # pruning time, fine-tuning excluded

        def before_step(k: int) -> None:
            self.stage(f"step {k}/{spec.steps}: pruning")
            if taylor is not None:
                accumulate_gradients(self.model, taylor, spec.taylor_batches)

        def after_step(k: int, history: list[list[Any]]) -> None:
            self.model.zero_grad(set_to_none=True)
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

    def finetune(self, k: int, params: int) -> dict[str, Any]:
        """Adversarial fine-tuning of step ``k`` in ``<out>/step-k``; continues from its best epoch."""
        import time

        from akd_edge.train.checkpoint import load_checkpoint
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
        best = load_checkpoint(step_dir, "best")
        self.model.load_state_dict(best["model"])
        return {"best_epoch": best["epoch"], "val": best["val"], "dir": str(step_dir)}

    def save(self) -> None:
        """``<out>/best.pt``: the last step's best, or (without fine-tuning) the pruned weights, validated."""
        import numpy as np

        from akd_edge.config import to_dict
        from akd_edge.train.checkpoint import FORMAT as CKPT_FORMAT
        from akd_edge.train.checkpoint import save_atomic
        from akd_edge.train.loop import write_recipe
        from akd_edge.train.validate import validate

        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_recipe(self.recipe, self.out_dir / "recipe.toml")
        if self.epochs:
            _copy_atomic(self.out_dir / f"step-{self.spec.steps}" / "best.pt", self.out_dir / "best.pt")
            return
        self.stage("validating the pruned model (no fine-tuning)")
        recipe, val_set = self.recipe, self.splits.val
        if recipe.eval.val_samples and len(val_set) > recipe.eval.val_samples:
            val_set = val_set.subset(np.arange(recipe.eval.val_samples))
        val = validate(
            self.model, val_set, recipe.eval.attack, batch_size=recipe.data.eval_batch_size, device=self.device
        )
        meta = self.meta
        ckpt = {
            "format": CKPT_FORMAT,
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
            "format": REPORT_FORMAT,
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
    epochs: int = 1,
    overrides: Sequence[str] = (),
    device: str | None = None,
    evaluation: EvalSpec | None = None,
    callbacks: Any = None,
    on_stage: Stage | None = None,
) -> dict[str, Any]:
    """Prune a trained run's model, fine-tune it adversarially after each step, and compare before/after.

    The fine-tuning uses the source run's own recipe (objective, teachers, data), with ``train.epochs``
    set to ``epochs`` and ``overrides`` (``section.key=value``) applied; ``epochs=0`` prunes without
    fine-tuning. Writes ``<out>/step-K/`` (one training run per step), ``<out>/best.pt`` (the final
    pruned model, with its pruning history), ``recipe.toml`` and ``report.json``; returns the report.
    The source run is only read. ``callbacks`` are the training loop's (progress display).
    """
    import json
    import time

    from akd_edge.train.checkpoint import load_model

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
    )
    job.load_data()
    ratio, search = job.resolve_ratio()
    job.stage(f"measuring the unpruned model on {len(job.test)} test images")
    before = job.measure(job.model)
    channels_before = conv_channels(job.model)
    job.prune(ratio)
    job.save()
    job.stage(f"measuring the pruned model (reloaded from {job.out_dir / 'best.pt'})")
    pruned, _ = load_model(job.out_dir, "best", job.device)
    after = job.measure(pruned)
    if search is not None and (after["params"], after["macs"]) != (search.params, search.macs):
        log.warning("the pruned model's counts differ from the search's: %s vs %s", after, search.as_dict())
    report = job.report(before, after, search, pruned, channels_before, time.perf_counter() - started)
    (job.out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
