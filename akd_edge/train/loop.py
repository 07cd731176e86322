"""One training loop for every objective: the method is a task, the loop only steps, logs and saves.

The loop is resumable at batch granularity: data order is a function of (seed, epoch), augmentation of
(seed, epoch, batch), and the RNG state is saved with the optimiser, so a killed run resumed with
``resume=True`` reaches the same weights as an uninterrupted run with the same seed.

A run directory belongs to one process at a time (:class:`RunDir`: locked, marked as a run), a run stops
with :class:`Diverged` rather than save NaN weights, and the library leaves process-wide state alone: the
trainer draws random numbers from its own RNG state (the global one is put back), and the thread count
(:func:`torch_threads`) and the Ctrl-C handler (``save_on_ctrl_c``) are for the caller to choose.

Under torchrun (a process group joined by the caller, :mod:`akd_edge.distributed`) the same loop runs
data-parallel: each rank takes its contiguous part of every global batch (``data.batch_size`` is the global
batch), its attack and teacher run on that part, and PyTorch's DistributedDataParallel averages the gradients.
A rank's loss is weighted by its share of the batch, so the averaged gradient is the single-process one even
when the shares differ. Rank 0 alone claims the run directory and writes to it; loss sums, the stop flag and
validation are reduced across ranks, so every rank takes the same decisions. Checkpoints hold every rank's RNG
state: a resume with the same world size continues each rank's random stream, another world size gives the
ranks fresh ones.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from akd_edge.attacks import build_attack, eval_mode
from akd_edge.config import Recipe, to_dict
from akd_edge.data import (
    DatasetSplits,
    ImageDataset,
    epoch_order,
    iterate_batches,
    load_dataset,
    mixed_order,
    num_batches,
)
from akd_edge.distributed import Group, check_sync_bn, current, data_parallel, rank_seed, use_sync_batchnorm
from akd_edge.env import resolve_device, torch_threads
from akd_edge.errors import CheckpointError, ConfigError
from akd_edge.files import (
    write_atomic,
    write_json_atomic,
    write_text_atomic,
)
from akd_edge.methods import METHODS, Task
from akd_edge.models import create_model, model_info
from akd_edge.teachers import (
    CleanTeacherCache,
    load_teachers,
    require_autograd,
    teacher_labels,
    teacher_provenance,
)
from akd_edge.train.accel import (
    DeviceSums,
    SpeedPlan,
    accelerate_teacher,
    as_input,
    bf16_supported,
    compile_model,
    default_plan,
    mark_step,
    plan_settings,
    prepare_student,
    step_autocast,
)
from akd_edge.train.checkpoint import FORMAT, load_checkpoint, model_only, save_atomic
from akd_edge.train.rundir import (
    RESUME_MAY_CHANGE,
    RunDir,
    claim_run_dir,
    new_run_dir,
    open_run_dir,
    recipe_changes,
    write_recipe,
)
from akd_edge.train.schedule import build_optimizer, build_scheduler
from akd_edge.train.validate import validate

__all__ = [
    "RESUME_MAY_CHANGE",
    "Callbacks",
    "Diverged",
    "Interrupted",
    "RunDir",
    "Trainer",
    "claim_run_dir",
    "new_run_dir",
    "open_run_dir",
    "torch_threads",
    "train_run",
    "write_recipe",
]

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving a resumable checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; resume with --resume {run_dir}")
        self.run_dir = run_dir


class Diverged(Exception):
    """The loss (or a weight) became NaN or inf: training stopped without saving; the last good checkpoint stays.

    The CLI exits with status 3. Resuming would diverge again: start a new run with a lower learning rate or
    gradient clipping.
    """

    def __init__(self, run_dir: Path, what: str, epoch: int, batch: int | str, saved: tuple[int, int] | None) -> None:
        if saved is None:
            kept = "no checkpoint had been saved yet"
        else:
            kept = f"the last good checkpoint, {run_dir / 'last.pt'} (epoch {saved[0]}, batch {saved[1]}), is kept"
        super().__init__(
            f"training diverged: {what} {'batch' if isinstance(batch, int) else 'batches'} {batch} of epoch {epoch}; "
            f"stopped without saving, {kept}. "
            "Start a new run with a lower train.optim.lr or with train.optim.grad_clip set"
        )
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch


class Callbacks:
    """Hooks for progress display; the CLI implements them with rich, the library stays silent."""

    def on_train_start(self, run_dir: Path, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, epoch: int, epochs: int, total_batches: int, start_batch: int) -> None: ...
    def on_batch(self, batch: int, stats: dict[str, float]) -> None: ...
    def on_validate(self, epoch: int) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...


def _rng_state(cuda: bool) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


@contextlib.contextmanager
def _resume_state_of(path: Path) -> Iterator[None]:
    """Restoring the resume state of ``path``: a damaged or hand-edited one (``rng = "abc"``) is one line."""
    try:
        yield
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"cannot resume from {path}: its resume state is damaged ({type(err).__name__}: {str(err)[:120]}); "
            "restore last.pt from a copy, or start the run again in a new folder"
        ) from None


@dataclass
class _State:
    """Everything that changes during training and must survive a resume."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "correct": 0.0, "n": 0.0, "time": 0.0})
    best: dict[str, Any] = field(default_factory=dict)
    dyn_row: dict[str, torch.Tensor] = field(default_factory=dict)


class _SigintFlag:
    """First Ctrl-C asks the loop to save and stop after the current batch; a second one aborts.

    In a data-parallel run SIGTERM (torchrun or a scheduler stopping the job) asks the same, and a second signal
    does not abort: torchrun passes Ctrl-C on to ranks that the terminal has signalled already.
    """

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self, distributed: bool = False) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM) if distributed else (signal.SIGINT,)
        previous = {signum: signal.getsignal(signum) for signum in signals}

        def handler(signum: int, frame: Any) -> None:
            if self.requested and not distributed:
                raise KeyboardInterrupt
            if not self.requested:
                what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                again = "" if distributed else " (press again to abort now)"
                log.warning("%s: saving a checkpoint after this batch%s", what, again)
            self.requested = True

        for signum in signals:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


class Trainer:
    """Trains ``recipe.model`` with ``recipe.method`` into ``run_dir``."""

    def __init__(
        self,
        recipe: Recipe,
        run_dir: str | Path | RunDir,
        role: str,
        callbacks: Callbacks | None = None,
        model: nn.Module | None = None,
        ckpt_extra: dict[str, Any] | None = None,
        data: DatasetSplits | None = None,
        teacher: nn.Module | None = None,
    ) -> None:
        self.recipe = recipe
        self.ckpt_extra = dict(ckpt_extra or {})
        self.claimed = run_dir if isinstance(run_dir, RunDir) else None
        self.run_dir = Path(run_dir)
        self.role = role
        self.group: Group | None = current()
        """The process group of a data-parallel run (joined by the caller, e.g. under torchrun), else None."""
        self.is_main = self.group is None or self.group.is_main
        self.cb = (callbacks or Callbacks()) if self.is_main else Callbacks()  # progress from rank 0 only
        self.device = resolve_device(recipe.run.device)
        if self.group is not None:
            self.device = self.group.device(self.device)
        self._ddp: nn.Module | None = None
        self._restore_bn: Any = None
        outer = self._rng_now()
        try:  # seeded from run.seed in an RNG state of its own; the caller's global state is put back
            torch.manual_seed(recipe.run.seed)
            self._build(model, data, teacher)
            if self.group is not None and not self.group.is_main:  # the same model, another stream of starts
                torch.manual_seed(rank_seed(recipe.run.seed, self.group.rank))
            self._rng = self._rng_now()
        finally:
            _set_rng_state(outer, self.device)

    def _rng_now(self) -> dict[str, Any]:
        """The global RNG state: CPU and, on CUDA, every device's (one process) or this rank's device's only."""
        if self.group is None:
            return _rng_state(self.device.type == "cuda")
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_device"] = torch.cuda.get_rng_state(self.device)
        return state

    def _build(self, model: nn.Module | None, data: DatasetSplits | None, teacher: nn.Module | None) -> None:
        recipe = self.recipe
        self.splits: DatasetSplits = data if data is not None else load_dataset(recipe.data, recipe.run.seed)
        self.model = model.to(self.device) if model is not None else self._build_model()
        self.teacher = self._build_teacher() if teacher is None else self._given_teacher(teacher)
        if self.teacher is not None:
            if METHODS.get(recipe.method.name).teacher_needs_grad:
                require_autograd(self.teacher, recipe.method.name)
            self.ckpt_extra.setdefault("teachers", teacher_provenance(self.teacher))
        self.train_set = self._training_images()
        self.attack = build_attack(recipe.train.attack, check_range=False)  # batches are uint8 / 255: in range
        self.task: Task | None = None  # built by prepare(), once the speed plan is known
        self.plan: SpeedPlan | None = None
        self.optimizer = build_optimizer(self.model, recipe.train.optim)
        self.epoch_length = len(self._epoch_order(0))
        """Images an epoch draws: the training images, or with ``data.labeled_fraction`` the unlabelled ones
        plus the labelled ones repeated beside them."""
        self.steps_per_epoch = num_batches(self.epoch_length, recipe.data.batch_size)
        if self.group is not None:
            self._check_shards()
        self.scheduler = build_scheduler(self.optimizer, recipe.train.optim, recipe.train.epochs * self.steps_per_epoch)
        self.state = _State()
        self.saved_at: tuple[int, int] | None = None  # (epoch, batch) of last.pt, the resume point on disk
        self.sigint = _SigintFlag()
        self._stop = False  # data-parallel: the ranks agreed to stop
        self.sync_every = 1 if self.device.type == "cpu" else 25
        """Batches between reads of the running totals: each read waits for the GPU, so not every step there."""
        self.dynamics = {"clean": [], "adv": []}
        fp16 = recipe.train.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def _check_shards(self) -> None:
        """Every rank needs a part of every batch: the smallest batch (the last one) must have a row per rank."""
        assert self.group is not None
        n, size, world = self.epoch_length, self.recipe.data.batch_size, self.group.world
        smallest = min(size, n % size or size)
        if smallest < world:
            raise ConfigError(
                f"data.batch_size={size} is the global batch, shared by {world} ranks: the "
                f"{'last batch of an epoch has' if smallest < size else 'batch has'} {smallest} images "
                f"({n} training images), fewer than the ranks; choose a batch size that leaves each rank some"
            )
        if self.recipe.train.sync_bn:
            check_sync_bn(self.device)  # a CPU run is refused before any work

    def _global_size(self, batch: int) -> int:
        """Images in global batch number ``batch`` of an epoch."""
        size = self.recipe.data.batch_size
        return min(size, self.epoch_length - batch * size)

    def _precision(self) -> str:
        """train.amp as a plan precision; what this device cannot run falls back to float32 with a warning."""
        amp = self.recipe.train.amp
        if amp == "none":
            return "fp32"
        if (amp == "fp16" and self.device.type != "cuda") or (amp == "bf16" and not bf16_supported(self.device)):
            log.warning("train.amp=%s: %s has no fast %s kernels; training in float32", amp, self.device, amp)
            return "fp32"
        return amp

    def _speed_text(self) -> str:
        plan = self.plan or SpeedPlan()
        parts = [plan.precision, "channels_last" if plan.channels_last else "NCHW"]
        if plan.compile:
            parts.append("compiled" if plan.compile_mode == "default" else f"compiled ({plan.compile_mode})")
        if self.teacher is not None and self.recipe.train.fast_teacher:
            parts.append(f"teacher {'folded ' if plan.teacher_fold else ''}{plan.teacher_precision}")
            runtimes = self._onnx_runtimes()
            parts += [f"ONNX teacher under {', '.join(runtimes)}"] if runtimes else []
        return ", ".join(parts)

    def _onnx_runtimes(self) -> list[str]:
        """How the ONNX teacher members run (onnxruntime, or OpenVINO at bf16 on the fast path)."""
        return sorted({m.runtime for m in getattr(self.teacher, "members", []) if hasattr(m, "runtime")})

    def prepare(self, saved: dict[str, Any] | None = None) -> None:
        """Apply the speed plan (the checkpoint's on resume, so a resumed run computes as before) and build
        the task on the prepared student and teacher."""
        t = self.recipe.train
        if saved:
            self.plan = SpeedPlan.from_dict(saved)
        else:
            self.plan = default_plan(
                self.device,
                precision=self._precision(),
                channels_last=t.channels_last,
                compile=t.compile,
                compile_mode=t.compile_mode,
                fast_teacher=t.fast_teacher,
            )
        if self.group is not None and t.sync_bn and self._restore_bn is None:
            self._restore_bn = use_sync_batchnorm(self.model, self.device)
        step_model = prepare_student(self.model, self.plan)
        method = METHODS.get(self.recipe.method.name)
        if self.teacher is not None and t.fast_teacher:
            self.teacher = accelerate_teacher(self.teacher, self.plan, needs_grad=method.teacher_needs_grad)
        elif self.teacher is not None and method.teacher_needs_grad:
            self.teacher.needs_grad = True  # as loaded, with autograd through it (its parameters stay frozen)
        self.task = method(step_model, self.attack, self.recipe.method, self.teacher)
        if self.group is not None:
            self._data_parallel(step_model)
        if self.teacher is not None and method.teacher_sees_clean(self.recipe.method) and not self.recipe.data.augment:
            self.task.clean_cache = CleanTeacherCache.build(
                self.teacher,
                self.train_set,
                self.recipe.data.eval_batch_size,
                self.device,
                self.splits.num_classes,
            )
        log.debug("speed plan: %s", {k: v for k, v in self.plan.to_dict().items() if k != "measured"})

    def _data_parallel(self, step_model: nn.Module) -> None:
        """The task's loss forward through DistributedDataParallel; its attack keeps the plain student.

        The attack only differentiates with respect to the input and runs in eval mode: through DDP it would
        broadcast buffers at every attack step for nothing.
        """
        assert self.task is not None and self.plan is not None
        self._ddp = data_parallel(self.model, self.device)
        loss_model = compile_model(self._ddp, mode=self.plan.compile_mode) if self.plan.compile else self._ddp
        attack = self.task.attack
        if attack is not None:
            self.task.attack = lambda model, x, y, **kw: attack(
                step_model if model is loss_model else model, x, y, **kw
            )
        self.task.model = loss_model

    def _release_parallel(self) -> None:
        """Drop the DDP wrapper (its gradient hooks) and put plain BatchNorm layers back into the model."""
        import gc

        if self.task is not None and self._ddp is not None:
            self.task = None
            self._ddp = None
            gc.collect()  # the reducer's hooks go with the wrapper: later backward passes stay local
        if self._restore_bn is not None:
            self._restore_bn()
            self._restore_bn = None

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Draw random numbers (initialisation, attack starts) from this run's RNG state, not the caller's."""
        outer = self._rng_now()
        _set_rng_state(self._rng, self.device)
        try:
            yield
        finally:
            self._rng = self._rng_now()
            _set_rng_state(outer, self.device)

    # -- construction -------------------------------------------------------------------------
    def _build_model(self) -> nn.Module:
        s = self.splits
        model = create_model(
            self.recipe.model.name,
            num_classes=s.num_classes,
            input_shape=s.input_shape,
            mean=s.mean,
            std=s.std,
            **self.recipe.model.kwargs,
        )
        return model.to(self.device)

    def _build_teacher(self) -> nn.Module | None:
        method = METHODS.get(self.recipe.method.name)
        if not method.needs_teacher and self.splits.unlabeled is None:
            return None
        if not self.recipe.teachers:
            why = (
                f"method.name={self.recipe.method.name!r} distills from teachers"
                if method.needs_teacher
                else f"data.unlabeled={self.recipe.data.unlabeled!r} needs teachers to label its images"
            )
            raise ConfigError(
                f"{why}, but the recipe has no [[teachers]] entry; add one (path = a teacher run directory or "
                "checkpoint)" + ("" if method.needs_teacher else ', or set data.unlabeled = "none"')
            )
        return load_teachers(self.recipe.teachers, self.device, self.splits.input_shape, self.splits.num_classes)

    def _given_teacher(self, teacher: nn.Module) -> nn.Module:
        """A teacher passed as an object (Python API): frozen, in eval mode, on the run's device."""
        from akd_edge.teachers import TeacherEnsemble

        ensemble = teacher if isinstance(teacher, TeacherEnsemble) else TeacherEnsemble([teacher])
        return ensemble.to(self.device).eval().requires_grad_(False)

    def _training_images(self) -> ImageDataset:
        """The labelled training images, followed by the unlabelled ones labelled by the teachers (RST's
        pseudo-labels: the objectives that read soft targets get the teachers' probabilities as for any image)."""
        labeled, unlabeled = self.splits.train, self.splits.unlabeled
        if unlabeled is None:
            return labeled
        assert self.teacher is not None  # _build_teacher loads one whenever there are unlabelled images
        pseudo = teacher_labels(self.teacher, unlabeled, self.recipe.data.eval_batch_size, self.device)
        log.info("teachers labelled %d unlabelled images", len(pseudo))
        return ImageDataset(
            np.concatenate([labeled.images, unlabeled.images]), np.concatenate([labeled.labels, pseudo])
        )

    def _epoch_order(self, epoch: int) -> np.ndarray:
        """The training images' order in ``epoch``: shuffled, or labelled and unlabelled images mixed in each
        batch by ``data.labeled_fraction``."""
        data, seed, n = self.recipe.data, self.recipe.run.seed, len(self.train_set)
        if self.splits.unlabeled is None or data.labeled_fraction == 0:
            return epoch_order(n, shuffle=True, seed=seed, epoch=epoch)
        labeled = len(self.splits.train)
        return mixed_order(labeled, n, data.batch_size, data.labeled_fraction, seed=seed, epoch=epoch)

    @property
    def arch(self) -> dict[str, Any]:
        s = self.splits
        return {
            "name": self.recipe.model.name,
            "kwargs": dict(self.recipe.model.kwargs),
            "num_classes": s.num_classes,
            "input_shape": list(s.input_shape),
            "mean": list(map(float, s.mean)),
            "std": list(map(float, s.std)),
        }

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint(self, val: dict[str, Any] | None = None) -> dict[str, Any]:
        """The resumable checkpoint; in a data-parallel run every rank must call it (it gathers RNG states)."""
        extra: dict[str, Any] = {}
        if self.group is not None:
            ranks = self.group.all_gather(self._rng_now())
            rng = {"torch": ranks[0]["torch"]}
            extra = {"rng_ranks": ranks, "world_size": self.group.world}
        else:
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
        data = self.recipe.data
        return {
            "format": FORMAT,
            "model": self.model.state_dict(),
            "arch": self.arch,
            "data": {"name": data.name, "data_dir": data.data_dir, "class_names": list(self.splits.class_names)},
            "threat": {"norm": self.recipe.eval.attack.norm, "eps": self.recipe.eval.attack.eps},
            "role": self.role,
            "recipe": to_dict(self.recipe),
            "epoch": self.state.epoch,
            "batch": self.state.batch,
            "val": val or {},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "best": dict(self.state.best),
            "sums": dict(self.state.sums),
            "dyn_row": dict(self.state.dyn_row),
            "speed": {k: v for k, v in self.plan.to_dict().items() if k != "measured"} if self.plan else {},
            **extra,
            **self.ckpt_extra,
        }

    def _sync_ranks(self) -> None:
        """Before a checkpoint or validation: every rank takes rank 0's buffers (BatchNorm statistics) and the
        epoch's dynamics rows of all ranks, so what is saved and validated is one model, the same on every rank."""
        if self.group is None:
            return
        self.group.sync_buffers(self.model)
        for row in self.state.dyn_row.values():
            self.group.max_(row)

    def _save_last(self, val: dict[str, Any] | None = None) -> None:
        self._sync_ranks()
        self._check_finite_weights()
        ckpt = self._checkpoint(val)
        if self.is_main:
            save_atomic(ckpt, self.run_dir / "last.pt")
        self.saved_at = (self.state.epoch, self.state.batch)

    def _diverged(self, what: str, batch: int | str) -> Diverged:
        return Diverged(self.run_dir, what, self.state.epoch + 1, batch, self.saved_at)

    def _check_finite_weights(self) -> None:
        """Never save NaN: a step can leave non-finite weights even when its own loss was finite."""
        for name, tensor in self.model.state_dict().items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise self._diverged(f"the weights ({name}) became non-finite after", self.state.batch)

    def _resume(self) -> dict[str, Any]:
        """Load last.pt's state; returns its speed plan (a run from before plans: float32, teacher as loaded).

        In a data-parallel run rank 0 reads and checks the files and hands the state to every rank.
        """
        if self.group is None:
            ckpt, metrics = self._read_last()
        else:
            ckpt, metrics = self.group.from_main(self._read_last)
        with _resume_state_of(self.run_dir / "last.pt"):
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self._resume_rng(ckpt)
            self.state = _State(
                epoch=int(ckpt["epoch"]),
                batch=int(ckpt["batch"]),
                sums=dict(ckpt["sums"]),
                best=dict(ckpt["best"]),
                dyn_row=dict(ckpt.get("dyn_row", {})),
            )
        self.saved_at = (self.state.epoch, self.state.batch)
        if metrics is not None and self.is_main:
            write_text_atomic(self.run_dir / "metrics.jsonl", metrics)
        dyn = self.run_dir / "dynamics.npz"
        if self.recipe.train.record_dynamics and self.is_main and dyn.is_file():
            with np.load(dyn) as arrays:
                self.dynamics = {k: list(arrays[k][: self.state.epoch]) for k in ("clean", "adv")}
        log.info("resuming %s at epoch %d, batch %d", self.run_dir, self.state.epoch + 1, self.state.batch)
        legacy = {"precision": self._precision() if self.device.type == "cuda" else "fp32", "teacher_fold": False}
        return ckpt.get("speed") or legacy

    def _resume_rng(self, ckpt: dict[str, Any]) -> None:
        """The random stream(s) where the checkpoint left them.

        A data-parallel resume with the world size that saved the checkpoint gives each rank its own state back;
        with another world size rank 0 continues the saved (rank 0's) stream and the others start fresh ones.
        """
        if self.group is None:
            torch.set_rng_state(ckpt["rng"]["torch"])
            if "cuda" in ckpt["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            return
        ranks = ckpt.get("rng_ranks") or []
        if len(ranks) == self.group.world:
            _set_rng_state(ranks[self.group.rank], self.device)
        elif self.group.is_main:
            torch.set_rng_state(ckpt["rng"]["torch"])
        else:
            torch.manual_seed(rank_seed(self.recipe.run.seed, self.group.rank, ckpt["epoch"], ckpt["batch"]))
        if len(ranks) not in (0, self.group.world) and self.group.is_main:
            log.info(
                "resuming with %d ranks a checkpoint saved by %d: the data order is the same, the ranks' random "
                "attack starts are new draws",
                self.group.world,
                len(ranks),
            )

    def _read_last(self) -> tuple[dict[str, Any], str | None]:
        """last.pt, checked against this run, and metrics.jsonl as it should be kept (None: no such file)."""
        path = self.run_dir / "last.pt"
        if not path.is_file():
            raise CheckpointError(f"cannot resume: {path} does not exist (start the run without --resume)")
        ckpt = load_checkpoint(path)
        if ckpt["arch"] != self.arch:
            raise CheckpointError(
                f"cannot resume: {path} holds {ckpt['arch']['name']}, the recipe builds {self.arch['name']}"
            )
        if ckpt.get("role", self.role) != self.role:
            raise CheckpointError(f"cannot resume: {self.run_dir} is a {ckpt['role']} run, not a {self.role} run")
        changed = recipe_changes(ckpt.get("recipe") or {}, to_dict(self.recipe))
        if changed:
            raise ConfigError(
                f"cannot resume {self.run_dir} with a different recipe ({', '.join(changed)} changed); "
                f"only {', '.join(RESUME_MAY_CHANGE)} may change when resuming"
            )
        metrics = self._kept_metrics(ckpt["epoch"])  # checked before anything changes
        saved_teachers = [t.get("sha256") for t in ckpt.get("teachers") or []]
        if saved_teachers and saved_teachers != [t.get("sha256") for t in self.ckpt_extra.get("teachers") or []]:
            log.warning("a teacher file changed since %s was saved (SHA-256 differs): the run mixes teachers", path)
        return ckpt, metrics

    def _kept_metrics(self, epochs_done: int) -> str | None:
        """metrics.jsonl without lines of epochs that the checkpoint does not contain (a kill between writes).

        A last line cut off mid-write is such a line; any other unreadable line is an error naming it.
        """
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return None
        text = path.read_bytes().decode("utf-8", errors="replace")
        lines = text.splitlines()
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                epoch = int(record["epoch"])
            except (ValueError, KeyError, TypeError) as err:
                if number == len(lines) and not text.endswith("\n"):
                    break  # cut off by a kill while it was written: its epoch was never saved
                raise CheckpointError(
                    f"cannot resume: {path} line {number} is not a metrics record ({type(err).__name__}: "
                    f"{line[:60]!r}); fix or delete that line and resume again ({self.run_dir / 'last.pt'} is intact)"
                ) from None
            if epoch <= epochs_done:
                kept.append(line)
        return "".join(line + "\n" for line in kept)

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    # -- training -------------------------------------------------------------------------------
    def run(self, resume: bool = False, save_on_ctrl_c: bool = False) -> dict[str, Any]:
        """Train (or continue, with ``resume``) to ``train.epochs``; returns the summary dict.

        Holds the run directory for the whole run (claiming it unless given a :class:`RunDir`).
        ``save_on_ctrl_c`` installs a SIGINT handler for the run: Ctrl-C saves a resumable checkpoint after
        the current batch and raises :class:`Interrupted` (the previous handler is put back).
        """
        claimed = self._claim(resume)
        try:
            distributed = self.group is not None
            ctrl_c = self.sigint.installed(distributed) if save_on_ctrl_c else contextlib.nullcontext()
            watch = self.group.watch() if self.group is not None else contextlib.nullcontext()
            with self._own_rng(), ctrl_c, watch:
                return self._run(resume)
        finally:
            self._release_parallel()
            if claimed is not None and claimed is not self.claimed:
                claimed.release()

    def _claim(self, resume: bool) -> RunDir | None:
        """The run directory, held by this process; in a data-parallel run rank 0 holds it (others get None)."""

        def claim() -> RunDir:
            if self.claimed is not None:
                return self.claimed
            return open_run_dir(self.run_dir) if resume else claim_run_dir(self.recipe, self.run_dir)

        if self.group is None:
            return claim()
        held: list[RunDir] = []
        self.group.from_main(lambda: held.append(claim()))  # a refusal stops every rank with its message
        return held[0] if held else None

    def _run(self, resume: bool) -> dict[str, Any]:
        if resume:
            self.prepare(self._resume())  # recipe.toml stays as the run wrote it
        else:
            if self.task is None:  # not prepared by the caller
                self.prepare(None)
            if self.is_main:
                write_recipe(self.recipe, self.run_dir / "recipe.toml")
        info = model_info(self.model, self.splits.input_shape)
        info |= {"train": len(self.splits.train), "val": len(self.splits.val), "device": str(self.device)}
        if self.splits.unlabeled is not None:
            info["unlabeled"] = len(self.splits.unlabeled)
        info["speed"] = self._speed_text()
        self.cb.on_train_start(self.run_dir, info)
        with plan_settings(self.plan):
            return self._epochs(info)

    def _epochs(self, info: dict[str, Any]) -> dict[str, Any]:
        while self.state.epoch < self.recipe.train.epochs:
            self._train_epoch()
            if self._stopping():
                self._save_last()
                raise Interrupted(self.run_dir)
            self._end_epoch()
        return self._summary(info)

    def _train_epoch(self) -> None:
        r, st = self.recipe, self.state
        if st.batch == 0:
            st.sums = {"loss": 0.0, "correct": 0.0, "n": 0.0, "time": 0.0}
            st.dyn_row = {}
        if r.train.record_dynamics and not st.dyn_row:
            n = len(self.train_set)
            st.dyn_row = {"clean": torch.zeros(n, dtype=torch.uint8), "adv": torch.zeros(n, dtype=torch.uint8)}
        self.cb.on_epoch_start(st.epoch + 1, r.train.epochs, self.steps_per_epoch, st.batch)
        assert self.task is not None
        self.task.set_progress(st.epoch / r.train.epochs)  # epoch-dependent objectives (IAD's warm-up)
        batches = iterate_batches(
            self.train_set,
            r.data.batch_size,
            order=self._epoch_order(st.epoch),
            shuffle=True,
            seed=r.run.seed,
            epoch=st.epoch,
            start_batch=st.batch,
            augment=r.data.augment,
            device=self.device,
            prefetch=2 if self.device.type == "cuda" else 0,  # next batches built and copied while a step runs
            shard=(self.group.rank, self.group.world) if self.group is not None else None,
        )
        pending, window = DeviceSums(self.device), st.batch + 1  # totals not yet read back from the device
        for x, y, idx in batches:
            t0 = time.perf_counter()
            size = len(y) if self.group is None else self._global_size(st.batch)
            out = self._step(x, y, idx, weight=1.0 if self.group is None else len(y) * self.group.world / size)
            correct = out["logits"].argmax(1) == y
            pending.add(loss=out["loss"].detach().double() * len(y), correct=correct.sum())
            st.sums["time"] += time.perf_counter() - t0
            st.sums["n"] += size
            if r.train.record_dynamics:
                self._record_dynamics(x, y, idx, correct)
            st.batch += 1
            save = bool(r.train.checkpoint_every) and st.batch % r.train.checkpoint_every == 0
            local_stop = self.group is None and self.sigint.requested  # a rank's own request waits for the next sync
            if save or local_stop or st.batch % self.sync_every == 0 or st.batch == self.steps_per_epoch:
                self._read_sums(pending, window)
                pending, window = DeviceSums(self.device), st.batch + 1
                self.cb.on_batch(st.batch, self._train_stats())
            if self._stopping():
                return
            if save:
                self._save_last()

    def _stopping(self) -> bool:
        """Whether Ctrl-C (or, data-parallel, SIGTERM) asked to stop: in a data-parallel run, once the ranks agree."""
        return self.sigint.requested if self.group is None else self._stop

    def _read_sums(self, pending: DeviceSums, first: int) -> None:
        """Add the device-side totals of batches ``first``..current to the epoch's sums (one host sync).

        In a data-parallel run the totals are summed over the ranks, and so is the stop flag: every rank stops
        after the same batch when any of them was asked to.
        """
        totals = pending.read()
        if self.group is not None:
            wanted = float(self.sigint.requested)
            loss, correct, stops = self.group.sum([totals.get("loss", 0.0), totals.get("correct", 0.0), wanted])
            totals = {"loss": loss, "correct": correct}
            self._stop = stops > 0
        if not math.isfinite(totals.get("loss", 0.0)):
            where = first if first == self.state.batch else f"{first}-{self.state.batch}"
            raise self._diverged(f"the loss became {totals['loss']} in", where)
        self.state.sums["loss"] += totals.get("loss", 0.0)
        self.state.sums["correct"] += totals.get("correct", 0.0)

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None, weight: float = 1.0
    ) -> dict[str, torch.Tensor]:
        """One optimiser step; ``weight`` scales the loss that is differentiated (a rank's share of the batch)."""
        assert self.task is not None and self.plan is not None
        self.model.train()
        mark_step(self.plan, self.device)
        x = as_input(x, self.plan.channels_last)
        if idx is not None:
            self.task.use_clean_batch(x, idx)  # lets a cached teacher answer for these training images
        with step_autocast(self.device, self.plan):
            out = self.task(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out["loss"] if weight == 1.0 else out["loss"] * weight).backward()
        if self.recipe.train.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.train.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return out

    @torch.no_grad()
    def _record_dynamics(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, adv_correct: torch.Tensor) -> None:
        with eval_mode(self.model):
            clean_correct = self.model(x).argmax(1) == y
        self.state.dyn_row["clean"][idx.cpu()] = clean_correct.cpu().to(torch.uint8)
        self.state.dyn_row["adv"][idx.cpu()] = adv_correct.cpu().to(torch.uint8)

    def _train_stats(self) -> dict[str, float]:
        s = self.state.sums
        n = max(s["n"], 1.0)
        return {
            "loss": s["loss"] / n,
            "acc": s["correct"] / n,
            "images_per_s": s["n"] / max(s["time"], 1e-9),
            "lr": self.optimizer.param_groups[0]["lr"],
        }

    def _end_epoch(self) -> None:
        r, st = self.recipe, self.state
        self._sync_ranks()
        self._check_finite_weights()
        stats = self._train_stats()
        self.cb.on_validate(st.epoch + 1)
        val_set = self.splits.val
        if r.eval.val_samples and len(val_set) > r.eval.val_samples:
            val_set = val_set.subset(np.arange(r.eval.val_samples))
        t0 = time.perf_counter()
        val = validate(
            self.model, val_set, r.eval.attack, batch_size=r.data.eval_batch_size, device=self.device, group=self.group
        )
        val_time = time.perf_counter() - t0
        st.epoch += 1
        st.batch = 0
        epoch_record = {"event": "epoch", "epoch": st.epoch, **stats, "time_s": st.sums["time"]}
        eval_record = {
            "event": "eval",
            "epoch": st.epoch,
            "split": "val",
            **val,
            "time_s": val_time,
            "attack": r.eval.attack.settings(),
        }
        improved = not st.best or val["robust_acc"] > st.best["robust_acc"]
        if improved:
            st.best = {"epoch": st.epoch, **val}
        ckpt = self._checkpoint(val)
        if self.is_main:
            self._write_epoch(ckpt, epoch_record, eval_record, improved)
        self.saved_at = (st.epoch, st.batch)
        self.cb.on_epoch_end({**epoch_record, "val": val, "best": dict(st.best), "improved": improved})

    def _write_epoch(
        self, ckpt: dict[str, Any], epoch_record: dict[str, Any], eval_record: dict[str, Any], improved: bool
    ) -> None:
        """The files of an epoch's end; last.pt last, so a kill before it resumes the epoch's validation."""
        r, st = self.recipe, self.state
        if r.train.record_dynamics:
            self._save_dynamics()
        if r.train.keep_epoch_checkpoints:
            save_atomic(model_only(ckpt), self.run_dir / "epochs" / f"epoch-{st.epoch:03d}.pt")
        if improved:
            save_atomic(model_only(ckpt), self.run_dir / "best.pt")
        self._log(epoch_record)
        self._log(eval_record)
        save_atomic(ckpt, self.run_dir / "last.pt")

    def _save_dynamics(self) -> None:
        for key in ("clean", "adv"):
            self.dynamics[key].append(self.state.dyn_row[key].numpy().copy())
        clean, adv = np.stack(self.dynamics["clean"]), np.stack(self.dynamics["adv"])
        write_atomic(self.run_dir / "dynamics.npz", lambda fh: np.savez_compressed(fh, clean=clean, adv=adv))

    def _summary(self, info: dict[str, Any]) -> dict[str, Any]:
        """summary.json, written by rank 0; every rank returns it."""
        summary = self._write_summary(info) if self.is_main else None
        return summary if self.group is None else self.group.broadcast(summary)

    def _write_summary(self, info: dict[str, Any]) -> dict[str, Any]:
        records = [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines() if line]
        epochs = [rec for rec in records if rec["event"] == "epoch"]
        evals = [rec for rec in records if rec["event"] == "eval"]
        summary = {
            "run_dir": str(self.run_dir),
            "role": self.role,
            "model": self.recipe.model.name,
            "method": self.recipe.method.name,
            "params": info["params"],
            "macs": info["macs"],
            "epochs": self.state.epoch,
            "best": self.state.best,
            "last": evals[-1] if evals else {},
            "train_time_s": sum(rec["time_s"] for rec in epochs),
            "val_time_s": sum(rec["time_s"] for rec in evals),
            "images_per_s": average_rate(epochs),
            "threat": {"norm": self.recipe.eval.attack.norm, "eps": self.recipe.eval.attack.eps},
            "train_attack": self.recipe.train.attack.settings(),
            "speed": {k: v for k, v in self.plan.to_dict().items() if k != "measured"} if self.plan else {},
            "images": {"labeled": len(self.splits.train), "unlabeled": len(self.train_set) - len(self.splits.train)},
        }
        if "teachers" in self.ckpt_extra:
            summary["teachers"] = self.ckpt_extra["teachers"]
        if runtimes := self._onnx_runtimes():
            summary["speed"]["onnx_teacher_runtime"] = runtimes
        if self.group is not None:
            summary["world_size"] = self.group.world
        write_json_atomic(self.run_dir / "summary.json", summary)
        return summary


def average_rate(epochs: list[dict[str, Any]]) -> float:
    """Training images per second over the whole run (all epochs' images over all their time), not the last
    epoch's rate: one fast epoch on a quiet machine says little of a run that mostly shared it."""
    images = sum(rec["images_per_s"] * rec["time_s"] for rec in epochs)
    seconds = sum(rec["time_s"] for rec in epochs)
    return images / seconds if seconds > 0 else 0.0


def train_run(
    recipe: Recipe,
    run_dir: str | Path | RunDir,
    *,
    resume: bool = False,
    role: str = "student",
    callbacks: Callbacks | None = None,
    model: nn.Module | None = None,
    ckpt_extra: dict[str, Any] | None = None,
    save_on_ctrl_c: bool = False,
    data: DatasetSplits | None = None,
    teacher: nn.Module | None = None,
) -> dict[str, Any]:
    """Train ``recipe`` into ``run_dir`` (or continue it with ``resume``); returns the summary dict.

    ``run_dir`` is a folder (locked for the run; a new run needs it missing or empty) or a :class:`RunDir`
    already claimed. ``model`` starts from given weights (for example a pruned student being fine-tuned)
    instead of a fresh ``recipe.model``; ``ckpt_extra`` is stored in every checkpoint (for example
    ``{"pruning": ...}``). ``data`` (train/val/test splits) and ``teacher`` (a model or
    :class:`~akd_edge.teachers.TeacherEnsemble`) replace the recipe's dataset and teachers. Raises :class:`Diverged` if the loss becomes NaN or inf, :class:`Interrupted`
    on Ctrl-C with ``save_on_ctrl_c``. Thread count and global RNG are left as they were.

    In a process joined to a process group (``torch.distributed.init_process_group``, e.g. under torchrun) every
    rank calls it with the same arguments and trains its shard of each batch with DistributedDataParallel;
    rank 0 alone claims ``run_dir``, writes and reports to ``callbacks``, and every rank returns the summary.
    A rank that loses the others raises :class:`akd_edge.distributed.PeerLost`.
    """
    trainer = Trainer(recipe, run_dir, role, callbacks, model, ckpt_extra, data, teacher)
    return trainer.run(resume=resume, save_on_ctrl_c=save_on_ctrl_c)
