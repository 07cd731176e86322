"""One training loop for every objective: the method is a task, the loop only steps, logs and saves.

The loop is resumable at batch granularity: data order is a function of (seed, epoch), augmentation of
(seed, epoch, batch), and the RNG state is saved with the optimiser, so a killed run resumed with
``resume=True`` reaches the same weights as an uninterrupted run with the same seed.

What it steps is resolved once, before the first step, and handed down: the data, student, teachers, optimiser
and attack (:mod:`akd_edge.train.parts`), the epoch order (:mod:`~akd_edge.train.order`), the run's random
stream (:mod:`~akd_edge.train.rng`) and the task on the speed plan (:mod:`~akd_edge.train.task`); a resume
restores :mod:`~akd_edge.train.state`, and the files beside the checkpoints are :mod:`~akd_edge.train.records`.

A run directory belongs to one process at a time (:class:`~akd_edge.train.rundir.RunDir`: locked, marked as a
run), a run stops with :class:`~akd_edge.train.stops.Diverged` rather than save NaN weights, and the library
leaves process-wide state alone: the trainer draws random numbers from its own RNG state (the global one is put
back), and the thread count (:func:`akd_edge.core.env.torch_threads`) and the Ctrl-C handler (``save_on_ctrl_c``)
are for the caller to choose.

Under torchrun (a process group joined by the caller, :mod:`akd_edge.core.distributed`) the same loop runs
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
import gc
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from akd_edge.attacks import build_attack
from akd_edge.config import Recipe, to_dict
from akd_edge.core.distributed import Group, current, rank_device
from akd_edge.core.files import write_json_atomic, write_text_atomic
from akd_edge.data import DatasetSplits, iterate_batches
from akd_edge.methods import Task
from akd_edge.models import model_info
from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, model_only, save_atomic
from akd_edge.train.accel import DeviceSums, SpeedPlan, as_input, mark_step, plan_settings, step_autocast
from akd_edge.train.parallel import check_sync_bn, rank_seed, use_sync_batchnorm
from akd_edge.train.parts import resolve_parts, run_arch
from akd_edge.train.records import DynamicsRecorder, append_metrics, epoch_record, eval_record, run_summary, train_stats
from akd_edge.train.rng import RunRng
from akd_edge.train.rundir import RunDir, claim_folder, open_run_dir, write_recipe
from akd_edge.train.state import TrainState, fresh_sums, read_last, resume_state_of
from akd_edge.train.stops import Diverged, Interrupted, StopRequest, nonfinite_weight
from akd_edge.train.task import choose_plan, legacy_plan, onnx_runtimes, plan_record, prepare_task, speed_text
from akd_edge.train.validate import validate_epoch

__all__ = ["Callbacks", "Trainer", "train_run"]

log = logging.getLogger(__name__)


class Callbacks:
    """Hooks for progress display; the CLI implements them with rich, the library stays silent."""

    def on_train_start(self, run_dir: Path, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, epoch: int, epochs: int, total_batches: int, start_batch: int) -> None: ...
    def on_batch(self, batch: int, stats: dict[str, float]) -> None: ...
    def on_validate(self, epoch: int) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...


class Trainer:
    """Trains ``recipe.model`` with ``recipe.method`` into ``run_dir``.

    Construction resolves the run's parts (data, student, teachers, optimiser, attack) in the run's own seeded
    random stream; :meth:`run` steps them, validates each epoch and saves.
    """

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
        self.attack = build_attack(recipe.train.attack, check_range=False)  # batches are uint8 / 255: in range
        self.device = rank_device(recipe.run.device, self.group)
        rank_stream = None  # where this rank's random stream goes on once the shared model is built
        if self.group is not None:
            if recipe.train.sync_bn:
                check_sync_bn(self.device)  # a CPU run is refused before any work
            if not self.group.is_main:  # the same model, another stream of starts
                rank_stream = rank_seed(recipe.run.seed, self.group.rank)
        self.rng = RunRng(self.device, self.group)
        with self.rng.seeded(recipe.run.seed, rank_stream):  # the caller's global RNG state is put back
            parts = resolve_parts(recipe, self.device, self.group, model, data, teacher)
        self.splits, self.model, self.train_set, self.order = parts.splits, parts.model, parts.train_set, parts.order
        self.teacher = parts.teacher
        self.optimizer, self.scheduler = parts.optimizer, parts.scheduler
        if parts.provenance is not None:
            self.ckpt_extra.setdefault("teachers", parts.provenance)
        fp16 = recipe.train.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self.task: Task | None = None  # built by prepare(), once the speed plan is known
        self.plan: SpeedPlan | None = None
        self.state = TrainState()
        self.saved_at: tuple[int, int] | None = None  # (epoch, batch) of last.pt, the resume point on disk
        self.sigint = StopRequest()
        self._stop = False  # data-parallel: the ranks agreed to stop
        self.sync_every = 1 if self.device.type == "cpu" else 25
        """Batches between reads of the running totals: each read waits for the GPU, so not every step there."""
        self.dynamics = DynamicsRecorder()
        self._ddp: nn.Module | None = None
        self._restore_bn: Any = None

    @property
    def arch(self) -> dict[str, Any]:
        return run_arch(self.recipe.model, self.splits)

    def prepare(self, saved: dict[str, Any] | None = None) -> None:
        """Apply the speed plan (the checkpoint's on resume, so a resumed run computes as before) and build
        the task on the prepared student and teacher."""
        t = self.recipe.train
        self.plan = choose_plan(t, self.device, saved)
        if self.group is not None and t.sync_bn and self._restore_bn is None:
            self._restore_bn = use_sync_batchnorm(self.model, self.device)
        self.task, self.teacher, self._ddp = prepare_task(
            self.recipe,
            self.plan,
            self.model,
            self.teacher,
            self.attack,
            self.train_set,
            num_classes=self.splits.num_classes,
            device=self.device,
            group=self.group,
        )
        log.debug("speed plan: %s", plan_record(self.plan))

    def _release_parallel(self) -> None:
        """Drop the DDP wrapper (its gradient hooks) and put plain BatchNorm layers back into the model."""
        if self.task is not None and self._ddp is not None:
            self.task = None
            self._ddp = None
            gc.collect()  # the reducer's hooks go with the wrapper: later backward passes stay local
        if self._restore_bn is not None:
            self._restore_bn()
            self._restore_bn = None

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
            with self.rng.own(), ctrl_c, watch:
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
            return open_run_dir(self.run_dir) if resume else claim_folder(self.run_dir)

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
        info["speed"] = speed_text(self.plan, self.teacher, self.recipe.train.fast_teacher)
        self.cb.on_train_start(self.run_dir, info)
        with plan_settings(self.plan):
            while self.state.epoch < self.recipe.train.epochs:
                self._train_epoch()
                if self._stopping():
                    self._save_last()
                    raise Interrupted(self.run_dir)
                self._end_epoch()
            return self._summary(info)

    def _batches(self) -> Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The rest of the current epoch's batches (this rank's part of each, in a data-parallel run)."""
        r, st = self.recipe, self.state
        return iterate_batches(
            self.train_set,
            r.data.batch_size,
            order=self.order(st.epoch),
            shuffle=True,
            seed=r.run.seed,
            epoch=st.epoch,
            start_batch=st.batch,
            augment=r.data.augment,
            device=self.device,
            prefetch=2 if self.device.type == "cuda" else 0,  # next batches built and copied while a step runs
            shard=(self.group.rank, self.group.world) if self.group is not None else None,
        )

    def _train_epoch(self) -> None:
        r, st = self.recipe, self.state
        if st.batch == 0:
            st.sums = fresh_sums()
            st.dyn_row = {}
        if r.train.record_dynamics and not st.dyn_row:
            st.dyn_row = DynamicsRecorder.new_row(len(self.train_set))
        self.cb.on_epoch_start(st.epoch + 1, r.train.epochs, self.order.steps, st.batch)
        assert self.task is not None
        self.task.set_progress(st.epoch / r.train.epochs)  # epoch-dependent objectives (IAD's warm-up)
        pending, window = DeviceSums(self.device), st.batch + 1  # totals not yet read back from the device
        for x, y, idx in self._batches():
            t0 = time.perf_counter()
            size = len(y) if self.group is None else self.order.global_size(st.batch)
            out = self._step(x, y, idx, weight=1.0 if self.group is None else len(y) * self.group.world / size)
            correct = out["logits"].argmax(1) == y
            pending.add(loss=out["loss"].detach().double() * len(y), correct=correct.sum())
            st.sums["time"] += time.perf_counter() - t0
            st.sums["n"] += size
            if r.train.record_dynamics:
                DynamicsRecorder.record(st.dyn_row, self.model, x, y, idx, correct)
            st.batch += 1
            save = bool(r.train.checkpoint_every) and st.batch % r.train.checkpoint_every == 0
            local_stop = self.group is None and self.sigint.requested  # a rank's own request waits for the next sync
            if save or local_stop or st.batch % self.sync_every == 0 or st.batch == self.order.steps:
                self._read_sums(pending, window)
                pending, window = DeviceSums(self.device), st.batch + 1
                self.cb.on_batch(st.batch, self._stats())
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

    def _stats(self) -> dict[str, float]:
        return train_stats(self.state.sums, self.optimizer.param_groups[0]["lr"])

    def _end_epoch(self) -> None:
        r, st = self.recipe, self.state
        self._sync_ranks()
        self._check_finite_weights()
        stats = self._stats()
        self.cb.on_validate(st.epoch + 1)
        val, val_time = validate_epoch(
            self.model, self.splits.val, r.eval, batch_size=r.data.eval_batch_size, device=self.device, group=self.group
        )
        st.epoch += 1
        st.batch = 0
        epoch_line = epoch_record(st.epoch, stats, st.sums["time"])
        eval_line = eval_record(st.epoch, val, val_time, r.eval.attack.settings())
        improved = st.keep_if_best(val)
        ckpt = self._checkpoint(val)
        if self.is_main:
            self._write_epoch(ckpt, epoch_line, eval_line, improved)
        self.saved_at = (st.epoch, st.batch)
        self.cb.on_epoch_end({**epoch_line, "val": val, "best": dict(st.best), "improved": improved})

    # -- saving ---------------------------------------------------------------------------------
    def _write_epoch(
        self, ckpt: dict[str, Any], epoch_line: dict[str, Any], eval_line: dict[str, Any], improved: bool
    ) -> None:
        """The files of an epoch's end; last.pt last, so a kill before it resumes the epoch's validation."""
        r, st = self.recipe, self.state
        if r.train.record_dynamics:
            self.dynamics.save(self.run_dir, st.dyn_row)
        if r.train.keep_epoch_checkpoints:
            save_atomic(model_only(ckpt), self.run_dir / "epochs" / f"epoch-{st.epoch:03d}.pt")
        if improved:
            save_atomic(model_only(ckpt), self.run_dir / "best.pt")
        append_metrics(self.run_dir, epoch_line)
        append_metrics(self.run_dir, eval_line)
        save_atomic(ckpt, self.run_dir / "last.pt")

    def _checkpoint(self, val: dict[str, Any] | None = None) -> dict[str, Any]:
        """The resumable checkpoint; in a data-parallel run every rank must call it (it gathers RNG states)."""
        rng, ranks = self.rng.for_checkpoint()
        data = self.recipe.data
        return {
            "format": CHECKPOINT_FORMAT,
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
            "speed": plan_record(self.plan),
            **ranks,
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
        name = nonfinite_weight(self.model)
        if name is not None:
            raise self._diverged(f"the weights ({name}) became non-finite after", self.state.batch)

    def _resume(self) -> dict[str, Any]:
        """Load last.pt's state; returns its speed plan (a run from before plans: float32, teacher as loaded).

        In a data-parallel run rank 0 reads and checks the files and hands the state to every rank.
        """

        def read() -> tuple[dict[str, Any], str | None]:
            return read_last(self.run_dir, self.arch, self.role, self.recipe, self.ckpt_extra.get("teachers"))

        ckpt, metrics = read() if self.group is None else self.group.from_main(read)
        with resume_state_of(self.run_dir / "last.pt"):
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.rng.resume(ckpt, self.recipe.run.seed)
            self.state = TrainState.from_checkpoint(ckpt)
        self.saved_at = (self.state.epoch, self.state.batch)
        if metrics is not None and self.is_main:
            write_text_atomic(self.run_dir / "metrics.jsonl", metrics)
        if self.recipe.train.record_dynamics and self.is_main:
            self.dynamics.load(self.run_dir, self.state.epoch)
        log.info("resuming %s at epoch %d, batch %d", self.run_dir, self.state.epoch + 1, self.state.batch)
        return ckpt.get("speed") or legacy_plan(self.recipe.train.amp, self.device)

    def _summary(self, info: dict[str, Any]) -> dict[str, Any]:
        """summary.json, written by rank 0; every rank returns it."""
        summary = None
        if self.is_main:
            summary = run_summary(
                self.run_dir,
                self.recipe,
                self.role,
                info,
                epochs=self.state.epoch,
                best=self.state.best,
                speed=plan_record(self.plan),
                images={"labeled": len(self.splits.train), "unlabeled": len(self.train_set) - len(self.splits.train)},
                teachers=self.ckpt_extra.get("teachers"),
                onnx_runtimes=onnx_runtimes(self.teacher),
                world_size=self.group.world if self.group is not None else None,
            )
            write_json_atomic(self.run_dir / "summary.json", summary)
        return summary if self.group is None else self.group.broadcast(summary)


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

    ``run_dir`` is a folder (locked for the run; a new run needs it missing or empty) or a
    :class:`~akd_edge.train.rundir.RunDir` already claimed. ``model`` starts from given weights (for example a
    pruned student being fine-tuned) instead of a fresh ``recipe.model``; ``ckpt_extra`` is stored in every
    checkpoint (for example ``{"pruning": ...}``). ``data`` (train/val/test splits) and ``teacher`` (a model or
    :class:`~akd_edge.teachers.TeacherEnsemble`) replace the recipe's dataset and teachers. Raises
    :class:`~akd_edge.train.stops.Diverged` if the loss becomes NaN or inf,
    :class:`~akd_edge.train.stops.Interrupted` on Ctrl-C with ``save_on_ctrl_c``. Thread count and global RNG
    are left as they were.

    In a process joined to a process group (``torch.distributed.init_process_group``, e.g. under torchrun) every
    rank calls it with the same arguments and trains its shard of each batch with DistributedDataParallel;
    rank 0 alone claims ``run_dir``, writes and reports to ``callbacks``, and every rank returns the summary.
    A rank that loses the others raises :class:`akd_edge.core.distributed.PeerLost`.
    """
    trainer = Trainer(recipe, run_dir, role, callbacks, model, ckpt_extra, data, teacher)
    return trainer.run(resume=resume, save_on_ctrl_c=save_on_ctrl_c)
