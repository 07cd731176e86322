"""The fine-tuning after each pruning step, as the source run trained: its recipe (renamed, from a fifth of its
learning rate, its teachers' factories trusted only when the user names them again) and its objective as a
loss (Taylor importance ranks channels by it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from akd_edge.core.errors import UsageError
from akd_edge.models.mode import eval_mode

FINETUNE_LR_FACTOR = 0.2
"""Fine-tuning's peak learning rate as a fraction of the source run's."""


def finetune_recipe(
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


def trusted_teachers(recipe_dict: dict[str, Any], teacher_factory: str | None) -> dict[str, Any]:
    """The recipe read from the checkpoint, its teachers' ``factory`` replaced by the user's ``teacher_factory``.

    That recipe comes from a file: a module it names is imported only if the user names it again.
    """
    teachers = recipe_dict.get("teachers")
    if not isinstance(teachers, list):
        return recipe_dict
    trusted = [{**entry, "factory": teacher_factory or ""} if isinstance(entry, dict) else entry for entry in teachers]
    return {**recipe_dict, "teachers": trusted}


def objective_loss(recipe: Any, model: nn.Module, splits: Any, device: torch.device) -> Callable[[], torch.Tensor]:
    """A closure returning the training objective (e.g. AKD) on the next training batch: what Taylor importance
    scores channels by."""
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
