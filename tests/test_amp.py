"""train.amp: bf16 autocast where the device has bf16 kernels, float32 with a warning where it has not (fp16 on
CPU included), the GradScaler only for fp16 on CUDA; `auto` decided by the hardware (akd_edge.train.accel)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from akd_edge.config import load_recipe
from akd_edge.models.checkpoint import load_checkpoint
from akd_edge.train import accel
from akd_edge.train.accel import bf16_supported
from akd_edge.train.loop import Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="autocast on CUDA needs a GPU")


def recipe(amp: str, device: str) -> dict:
    return {
        "run": {"name": f"amp-{amp}", "seed": 0, "device": device},
        "data": {
            "name": "synthetic",
            "data_dir": "n=256,test=64,shape=1x8x8,classes=3",
            "val_size": 64,
            "batch_size": 64,
        },
        "model": {"name": "cnn-student", "kwargs": {"width": 0.5}},
        "method": {"name": "at"},
        "train": {"epochs": 1, "amp": amp, "keep_epoch_checkpoints": False, "attack": {"eps": 0.1, "steps": 1}},
        "eval": {"val_samples": 16, "attack": {"eps": 0.1, "steps": 1}},
    }


def record_training_dtypes(model: nn.Module) -> set[torch.dtype]:
    """The output dtypes of every conv and linear layer while the model is in train mode (student steps)."""
    dtypes: set[torch.dtype] = set()

    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if module.training:
            dtypes.add(output.dtype)

    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            module.register_forward_hook(hook)
    return dtypes


def record_loss_dtypes(trainer: Trainer) -> list[torch.dtype]:
    """Wraps the trainer's step so the dtype of each loss the loop backpropagates is seen."""
    step, dtypes = trainer._step, []

    def wrapped(
        x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None, weight: float = 1.0
    ) -> dict[str, torch.Tensor]:
        out = step(x, y, idx, weight)
        dtypes.append(out["loss"].dtype)
        return out

    trainer._step = wrapped
    return dtypes


def test_the_dtype_recorder_sees_autocast() -> None:
    """The check below is meaningful: CPU autocast would make these layers compute in bfloat16."""
    layer = nn.Linear(4, 2).train()
    dtypes = record_training_dtypes(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.rand(2, 4))
    assert dtypes == {torch.bfloat16}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_the_cpu_cannot_run_warns_and_trains_in_float32(
    amp: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("akd_edge.train.task.bf16_supported", lambda device: False)  # an AVX2-only CPU
    caplog.set_level(logging.WARNING)
    trainer = Trainer(load_recipe(recipe(amp, "cpu")), tmp_path / "run", "student")
    assert not trainer.scaler.is_enabled()
    layer_dtypes = record_training_dtypes(trainer.model)
    loss_dtypes = record_loss_dtypes(trainer)
    summary = trainer.run()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"train.amp={amp}" in m and "float32" in m for m in warnings), warnings
    assert layer_dtypes == {torch.float32}
    assert loss_dtypes and set(loss_dtypes) == {torch.float32}
    assert 0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1
    last = load_checkpoint(tmp_path / "run", "last")
    assert all(t.dtype == torch.float32 for t in last["model"].values() if t.is_floating_point())
    assert last["speed"]["precision"] == "fp32"


@pytest.mark.skipif(not bf16_supported(torch.device("cpu")), reason="this CPU has no bf16 kernels")
def test_bf16_on_a_cpu_with_bf16_kernels_autocasts_and_keeps_float32_weights(tmp_path: Path) -> None:
    trainer = Trainer(load_recipe(recipe("bf16", "cpu")), tmp_path / "run", "student")
    layer_dtypes = record_training_dtypes(trainer.model)
    loss_dtypes = record_loss_dtypes(trainer)
    summary = trainer.run()
    assert torch.bfloat16 in layer_dtypes
    assert set(loss_dtypes) == {torch.float32}  # the methods compute their losses on float logits
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert summary["speed"]["precision"] == "bf16"
    assert 0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1


def test_none_trains_in_float32_without_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    trainer = Trainer(load_recipe(recipe("none", "cpu")), tmp_path / "run", "student")
    layer_dtypes = record_training_dtypes(trainer.model)
    trainer.run()
    assert not any("amp" in r.getMessage() for r in caplog.records)
    assert not trainer.scaler.is_enabled()
    assert layer_dtypes == {torch.float32}


@pytest.mark.parametrize(
    ("flags", "precision", "channels_last"),
    [
        (["avx2"], "fp32", False),  # AVX2 only: the float32 NCHW path that was measured before
        (["avx2", "avx512f", "avx512_bf16"], "fp32", True),  # bf16 kernels but no AMX: not measured faster
        (["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"], "bf16", True),
    ],
)
def test_auto_is_decided_by_the_cpu_not_by_a_timing(
    flags: list[str], precision: str, channels_last: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accel, "cpu_flags", lambda: flags)
    monkeypatch.setattr(accel, "bf16_supported", lambda device: "avx512_bf16" in flags)
    plan = accel.default_plan(torch.device("cpu"))
    assert (plan.precision, plan.channels_last) == (precision, channels_last)
    assert (plan.teacher_precision, plan.teacher_channels_last, plan.teacher_fold) == (precision, channels_last, True)
    assert accel.default_plan(torch.device("cpu"), precision="fp32", channels_last="off", fast_teacher=False) == (
        accel.SpeedPlan(teacher_fold=False, flush_denormal=True)
    )


@needs_cuda
@pytest.mark.parametrize(("amp", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_on_cuda_autocasts_the_student_and_keeps_float32_weights(
    amp: str, dtype: torch.dtype, tmp_path: Path
) -> None:
    trainer = Trainer(load_recipe(recipe(amp, "cuda")), tmp_path / "run", "student")
    assert trainer.scaler.is_enabled() == (amp == "fp16")  # only float16 needs loss scaling
    layer_dtypes = record_training_dtypes(trainer.model)
    loss_dtypes = record_loss_dtypes(trainer)
    summary = trainer.run()
    assert dtype in layer_dtypes
    assert set(loss_dtypes) == {torch.float32}  # the methods compute their losses on float logits
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
    assert 0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1
