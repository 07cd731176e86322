"""The task the loop steps, as the speed plan prepares it: which plan (the recipe's, or on resume the
checkpoint's, so a resumed run computes as before), the teacher as the task runs it, the loss forward through
DistributedDataParallel in a data-parallel run, and the plan in words for the progress display."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from akd_edge.attacks import TrainingAttack
from akd_edge.config import Recipe, TrainConfig
from akd_edge.core.distributed import Group
from akd_edge.data import ImageDataset
from akd_edge.methods import METHODS, Task
from akd_edge.teachers import CleanTeacherCache
from akd_edge.train.accel import (
    SpeedPlan,
    accelerate_teacher,
    bf16_supported,
    compile_model,
    default_plan,
    prepare_student,
)
from akd_edge.train.parallel import data_parallel

log = logging.getLogger(__name__)


def plan_precision(amp: str, device: torch.device) -> str:
    """``train.amp`` as a plan precision; what ``device`` cannot run falls back to float32 with a warning."""
    if amp == "none":
        return "fp32"
    if (amp == "fp16" and device.type != "cuda") or (amp == "bf16" and not bf16_supported(device)):
        log.warning("train.amp=%s: %s has no fast %s kernels; training in float32", amp, device, amp)
        return "fp32"
    return amp


def choose_plan(train: TrainConfig, device: torch.device, saved: dict[str, Any] | None = None) -> SpeedPlan:
    """The checkpoint's ``saved`` plan, or the one ``train``'s settings give on ``device``."""
    if saved:
        return SpeedPlan.from_dict(saved)
    return default_plan(
        device,
        precision=plan_precision(train.amp, device),
        channels_last=train.channels_last,
        compile=train.compile,
        compile_mode=train.compile_mode,
        fast_teacher=train.fast_teacher,
    )


def legacy_plan(amp: str, device: torch.device) -> dict[str, Any]:
    """The plan of a checkpoint saved before plans were saved: float32 (or train.amp on CUDA), teacher as loaded."""
    return {"precision": plan_precision(amp, device) if device.type == "cuda" else "fp32", "teacher_fold": False}


def task_teacher(teacher: nn.Module | None, plan: SpeedPlan, needs_grad: bool, fast: bool) -> nn.Module | None:
    """The teacher as the task runs it: on ``fast`` (train.fast_teacher) a copy on the plan's fast path;
    ``needs_grad`` keeps autograd through it (its parameters stay frozen)."""
    if teacher is not None and fast:
        return accelerate_teacher(teacher, plan, needs_grad=needs_grad)
    if teacher is not None and needs_grad:
        teacher.needs_grad = True
    return teacher


def data_parallel_task(
    task: Task, model: nn.Module, step_model: nn.Module, plan: SpeedPlan, device: torch.device
) -> nn.Module:
    """Make the task's loss forward run through DistributedDataParallel; returns the DDP wrapper.

    The task's attack keeps the plain student: it only differentiates with respect to the input and runs in eval
    mode, so through DDP it would broadcast buffers at every attack step for nothing.
    """
    ddp = data_parallel(model, device)
    loss_model = compile_model(ddp, mode=plan.compile_mode) if plan.compile else ddp
    attack = task.attack
    if attack is not None:
        task.attack = lambda model, x, y, **kw: attack(step_model if model is loss_model else model, x, y, **kw)
    task.model = loss_model
    return ddp


def prepare_task(
    recipe: Recipe,
    plan: SpeedPlan,
    model: nn.Module,
    teacher: nn.Module | None,
    attack: TrainingAttack | None,
    train_set: ImageDataset,
    *,
    num_classes: int,
    device: torch.device,
    group: Group | None = None,
) -> tuple[Task, nn.Module | None, nn.Module | None]:
    """``recipe``'s objective on ``model`` and ``teacher`` as ``plan`` prepares them; returns the task, the
    teacher as the task runs it and, in a data-parallel run (``group``), the DDP wrapper.

    A teacher that sees only the clean, unaugmented training images answers from a cache of its outputs on them.
    """
    method = METHODS.get(recipe.method.name)
    step_model = prepare_student(model, plan)
    teacher = task_teacher(teacher, plan, method.teacher_needs_grad, recipe.train.fast_teacher)
    task = method(step_model, attack, recipe.method, teacher)
    ddp = data_parallel_task(task, model, step_model, plan, device) if group is not None else None
    if teacher is not None and method.teacher_sees_clean(recipe.method) and not recipe.data.augment:
        task.clean_cache = CleanTeacherCache.build(teacher, train_set, recipe.data.eval_batch_size, device, num_classes)
    return task, teacher, ddp


def onnx_runtimes(teacher: nn.Module | None) -> list[str]:
    """How the ONNX teacher members run (onnxruntime, or OpenVINO at bf16 on the fast path)."""
    return sorted({m.runtime for m in getattr(teacher, "members", []) if hasattr(m, "runtime")})


def speed_text(plan: SpeedPlan | None, teacher: nn.Module | None, fast_teacher: bool) -> str:
    """The plan in words, for the progress display."""
    plan = plan or SpeedPlan()
    parts = [plan.precision, "channels_last" if plan.channels_last else "NCHW"]
    if plan.compile:
        parts.append("compiled" if plan.compile_mode == "default" else f"compiled ({plan.compile_mode})")
    if teacher is not None and fast_teacher:
        parts.append(f"teacher {'folded ' if plan.teacher_fold else ''}{plan.teacher_precision}")
        runtimes = onnx_runtimes(teacher)
        parts += [f"ONNX teacher under {', '.join(runtimes)}"] if runtimes else []
    return ", ".join(parts)


def plan_record(plan: SpeedPlan | None) -> dict[str, Any]:
    """The plan as checkpoints and summary.json keep it (without its timings)."""
    return {k: v for k, v in plan.to_dict().items() if k != "measured"} if plan else {}
