"""What a run trains with, resolved once from the recipe (or taken as given objects) and handed to the loop:
the data splits, the student, each epoch's image order, the optimiser and its schedule, and the teachers with
the labels they give the unlabelled images.

Resolution runs downward in one pass: the parts the training package makes first, then the teachers (loaded
once, checked once, asked once for pseudo-labels). The loop receives these objects: it never loads a teacher
or reads a teacher's checkpoint again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from akd_edge.config import ModelConfig, Recipe
from akd_edge.core.distributed import Group
from akd_edge.core.errors import ConfigError
from akd_edge.data import DatasetSplits, ImageDataset, load_dataset
from akd_edge.methods import METHODS
from akd_edge.models import create_model
from akd_edge.teachers import TeacherEnsemble, load_teachers, require_autograd, teacher_labels, teacher_provenance
from akd_edge.train.order import EpochOrder
from akd_edge.train.schedule import build_optimizer, build_scheduler

log = logging.getLogger(__name__)


@dataclass
class RunParts:
    """The objects a run is made of, handed to the loop."""

    splits: DatasetSplits
    model: nn.Module
    """The student, on the run's device."""
    order: EpochOrder
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    teacher: TeacherEnsemble | None
    """Frozen, in eval mode, on the run's device; None when the method and data need no teacher."""
    provenance: list[dict[str, Any]] | None
    """Where each teacher came from (the ``teachers`` entry of checkpoints and summary), None without teachers."""
    train_set: ImageDataset
    """The labelled training images, followed by the unlabelled ones with the teachers' labels."""


def resolve_parts(
    recipe: Recipe,
    device: torch.device,
    group: Group | None = None,
    model: nn.Module | None = None,
    data: DatasetSplits | None = None,
    teacher: nn.Module | None = None,
) -> RunParts:
    """The parts of ``recipe``'s run on ``device``; ``model``, ``data`` and ``teacher`` replace the recipe's.

    Call it with the run's seed in place: the student's initial weights are drawn here.
    """
    splits = data if data is not None else load_dataset(recipe.data, recipe.run.seed)
    student = model.to(device) if model is not None else new_student(recipe.model, splits, device)
    unlabeled = len(splits.unlabeled) if splits.unlabeled is not None else None
    order = EpochOrder(len(splits.train), unlabeled, recipe.data, recipe.run.seed)
    if group is not None:
        order.check_shards(group.world)
    optimizer = build_optimizer(student, recipe.train.optim)
    scheduler = build_scheduler(optimizer, recipe.train.optim, recipe.train.epochs * order.steps)
    ensemble = resolve_teacher(recipe, splits, device, teacher)
    provenance = teacher_provenance(ensemble) if ensemble is not None else None
    train_set = splits.train
    if splits.unlabeled is not None:
        # RST's pseudo-labels; the objectives that read soft targets get the teachers' probabilities as for any image
        assert ensemble is not None  # resolve_teacher loads teachers whenever there are unlabelled images
        pseudo = teacher_labels(ensemble, splits.unlabeled, recipe.data.eval_batch_size, device)
        log.info("teachers labelled %d unlabelled images", len(pseudo))
        images = np.concatenate([splits.train.images, splits.unlabeled.images])
        train_set = ImageDataset(images, np.concatenate([splits.train.labels, pseudo]))
    return RunParts(splits, student, order, optimizer, scheduler, ensemble, provenance, train_set)


def new_student(cfg: ModelConfig, splits: DatasetSplits, device: torch.device) -> nn.Module:
    """A freshly initialised ``cfg.name`` for the data of ``splits``, on ``device``."""
    model = create_model(
        cfg.name,
        num_classes=splits.num_classes,
        input_shape=splits.input_shape,
        mean=splits.mean,
        std=splits.std,
        **cfg.kwargs,
    )
    return model.to(device)


def resolve_teacher(
    recipe: Recipe, splits: DatasetSplits, device: torch.device, given: nn.Module | None = None
) -> TeacherEnsemble | None:
    """The run's teachers: ``given`` (a model or ensemble) or the recipe's ``[[teachers]]``, loaded when the
    method distils or unlabelled images need labels; a ConfigError when the method differentiates a teacher
    that has no gradients (an ONNX one)."""
    method = METHODS.get(recipe.method.name)
    if given is not None:  # a teacher passed as an object (Python API): frozen, in eval mode, on the run's device
        ensemble = given if isinstance(given, TeacherEnsemble) else TeacherEnsemble([given])
        teacher = ensemble.to(device).eval().requires_grad_(False)
    elif not method.needs_teacher and splits.unlabeled is None:
        return None
    elif not recipe.teachers:
        why = (
            f"method.name={recipe.method.name!r} distills from teachers"
            if method.needs_teacher
            else f"data.unlabeled={recipe.data.unlabeled!r} needs teachers to label its images"
        )
        raise ConfigError(
            f"{why}, but the recipe has no [[teachers]] entry; add one (path = a teacher run directory or "
            "checkpoint)" + ("" if method.needs_teacher else ', or set data.unlabeled = "none"')
        )
    else:
        teacher = load_teachers(recipe.teachers, device, splits.input_shape, splits.num_classes)
    if method.teacher_needs_grad:
        require_autograd(teacher, recipe.method.name)
    return teacher


def run_arch(cfg: ModelConfig, splits: DatasetSplits) -> dict[str, Any]:
    """The checkpoint's ``arch`` entry: how to rebuild the student."""
    return {
        "name": cfg.name,
        "kwargs": dict(cfg.kwargs),
        "num_classes": splits.num_classes,
        "input_shape": list(splits.input_shape),
        "mean": list(map(float, splits.mean)),
        "std": list(map(float, splits.std)),
    }
