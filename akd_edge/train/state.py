"""What a run carries across a resume: the position (epoch, batch), the epoch's running sums and the best
validation so far (:class:`TrainState`), and ``last.pt`` read back and checked against the run before anything
changes (:func:`read_last`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from akd_edge.config import Recipe, to_dict
from akd_edge.core.errors import CheckpointError, ConfigError
from akd_edge.models.checkpoint import load_checkpoint
from akd_edge.train.records import kept_metrics
from akd_edge.train.rundir import RESUME_MAY_CHANGE, recipe_changes

log = logging.getLogger(__name__)


def fresh_sums() -> dict[str, float]:
    """An epoch's running totals before its first batch."""
    return {"loss": 0.0, "correct": 0.0, "n": 0.0, "time": 0.0}


@dataclass
class TrainState:
    """Everything that changes during training, besides weights and optimiser, and must survive a resume."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed within the current epoch
    sums: dict[str, float] = field(default_factory=fresh_sums)
    best: dict[str, Any] = field(default_factory=dict)
    dyn_row: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        return cls(
            epoch=int(ckpt["epoch"]),
            batch=int(ckpt["batch"]),
            sums=dict(ckpt["sums"]),
            best=dict(ckpt["best"]),
            dyn_row=dict(ckpt.get("dyn_row", {})),
        )

    def keep_if_best(self, val: dict[str, Any]) -> bool:
        """Whether ``val`` (the epoch just completed) beats the best robust accuracy so far; it becomes the best."""
        improved = not self.best or val["robust_acc"] > self.best["robust_acc"]
        if improved:
            self.best = {"epoch": self.epoch, **val}
        return improved


@contextlib.contextmanager
def resume_state_of(path: Path) -> Iterator[None]:
    """Restoring the resume state of ``path``: a damaged or hand-edited one (``rng = "abc"``) is one line."""
    try:
        yield
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"cannot resume from {path}: its resume state is damaged ({type(err).__name__}: {str(err)[:120]}); "
            "restore last.pt from a copy, or start the run again in a new folder"
        ) from None


def read_last(
    run_dir: Path, arch: dict[str, Any], role: str, recipe: Recipe, teachers: list[dict[str, Any]] | None
) -> tuple[dict[str, Any], str | None]:
    """``last.pt``, checked against this run (``arch``, ``role``, ``recipe``, the ``teachers`` it was given),
    and metrics.jsonl as it should be kept (None: no such file)."""
    path = run_dir / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"cannot resume: {path} does not exist (start the run without --resume)")
    ckpt = load_checkpoint(path)
    if ckpt["arch"] != arch:
        raise CheckpointError(f"cannot resume: {path} holds {ckpt['arch']['name']}, the recipe builds {arch['name']}")
    if ckpt.get("role", role) != role:
        raise CheckpointError(f"cannot resume: {run_dir} is a {ckpt['role']} run, not a {role} run")
    changed = recipe_changes(ckpt.get("recipe") or {}, to_dict(recipe))
    if changed:
        raise ConfigError(
            f"cannot resume {run_dir} with a different recipe ({', '.join(changed)} changed); "
            f"only {', '.join(RESUME_MAY_CHANGE)} may change when resuming"
        )
    metrics = kept_metrics(run_dir, ckpt["epoch"])  # checked before anything changes
    saved_teachers = [t.get("sha256") for t in ckpt.get("teachers") or []]
    if saved_teachers and saved_teachers != [t.get("sha256") for t in teachers or []]:
        log.warning("a teacher file changed since %s was saved (SHA-256 differs): the run mixes teachers", path)
    return ckpt, metrics
