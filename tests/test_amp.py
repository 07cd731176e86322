"""train.amp: on CPU it warns and trains in float32 with the GradScaler off; on CUDA autocast really runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from akd_edge.config import load_recipe
from akd_edge.train.checkpoint import load_checkpoint
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
    """Wraps the trainer's task so the dtype of each loss the loop backpropagates is seen."""
    task, dtypes = trainer.task, []

    def wrapped(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out = task(x, y)
        dtypes.append(out["loss"].dtype)
        return out

    trainer.task = wrapped
    return dtypes


def test_the_dtype_recorder_sees_autocast() -> None:
    """The check below is meaningful: CPU autocast would make these layers compute in bfloat16."""
    layer = nn.Linear(4, 2).train()
    dtypes = record_training_dtypes(layer)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer(torch.rand(2, 4))
    assert dtypes == {torch.bfloat16}


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu_warns_and_trains_in_float32(amp: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    trainer = Trainer(load_recipe(recipe(amp, "cpu")), tmp_path / "run", "student")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"train.amp={amp}" in m and "float32" in m for m in warnings), warnings
    assert not trainer.scaler.is_enabled()

    layer_dtypes = record_training_dtypes(trainer.model)
    loss_dtypes = record_loss_dtypes(trainer)
    summary = trainer.run()
    assert layer_dtypes == {torch.float32}
    assert loss_dtypes and set(loss_dtypes) == {torch.float32}
    assert 0 <= summary["best"]["robust_acc"] <= summary["best"]["clean_acc"] <= 1
    weights = load_checkpoint(tmp_path / "run", "last")["model"]
    assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())


def test_no_amp_warning_by_default(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    trainer = Trainer(load_recipe(recipe("none", "cpu")), tmp_path / "run", "student")
    assert not any("amp" in r.getMessage() for r in caplog.records)
    assert not trainer.scaler.is_enabled()


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
