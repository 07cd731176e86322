"""Checkpoints are files from elsewhere: their arch may name only registered models, at bounded sizes."""

from __future__ import annotations

import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from akd_edge.core.errors import CheckpointError, ConfigError
from akd_edge.models import create_model
from akd_edge.models.checkpoint import CHECKPOINT_FORMAT, build_model, load_model, save_atomic
from akd_edge.models.zoo import MAX_PARAMS

SHAPE = (1, 12, 12)


def _ckpt(name: str = "cnn-student", **arch: object) -> dict:
    model = create_model("cnn-student", num_classes=3, input_shape=SHAPE, width=0.25)
    base = {"name": name, "kwargs": {"width": 0.25}, "num_classes": 3, "input_shape": list(SHAPE)}
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "arch": {**base, "mean": [0.5], "std": [0.25], **arch},
        "path": "crafted.pt",
    }


@pytest.fixture
def planted_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A module on sys.path that records being imported (the stand-in for ``this`` printing the Zen)."""
    (tmp_path / "akd_planted_mod.py").write_text(
        textwrap.dedent(
            """
            import sys
            sys.akd_planted_imported = True
            from akd_edge.models.cnn import cnn_student as build
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delattr(sys, "akd_planted_imported", raising=False)
    sys.modules.pop("akd_planted_mod", None)
    yield "akd_planted_mod:build"
    sys.modules.pop("akd_planted_mod", None)


def test_checkpoint_naming_a_module_is_refused_without_importing_it(planted_module: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        build_model(_ckpt(planted_module))
    message = str(err.value)
    assert planted_module in message and f"factory={planted_module!r}" in message
    assert not getattr(sys, "akd_planted_imported", False), "the module named by the checkpoint was imported"
    path = tmp_path / "c.pt"
    save_atomic({k: v for k, v in _ckpt(planted_module).items() if k != "path"}, path)
    with pytest.raises(CheckpointError, match="not a registered architecture"):
        load_model(path)
    assert not getattr(sys, "akd_planted_imported", False)


def test_a_user_given_factory_is_imported_and_builds(planted_module: str) -> None:
    model = build_model(_ckpt(planted_module), factory=planted_module)
    assert getattr(sys, "akd_planted_imported", False)
    assert model(torch.zeros(2, *SHAPE)).shape == (2, 3)


@pytest.mark.parametrize(
    ("arch", "needle"),
    [
        ({"kwargs": {"width": 10000}}, "out of range"),
        ({"kwargs": {"width": 600}}, "parameters, more than the limit"),
        ({"kwargs": {"width": float("inf")}}, "out of range"),
        ({"num_classes": 10**9}, "num_classes must be in"),
        ({"input_shape": [1, 100000, 100000]}, "too large"),
        ({"input_shape": [10000, 12, 12]}, "too large"),
        ({"input_shape": "abc"}, "input_shape"),
        ({"kwargs": ["width"]}, "arch.kwargs must be a table"),
    ],
)
def test_crafted_sizes_are_refused_before_allocating(arch: dict, needle: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        build_model(_ckpt(**arch))
    assert needle in str(err.value) and "crafted.pt" in str(err.value)
    assert time.perf_counter() - start < 10


def test_user_recipes_get_the_same_parameter_limit() -> None:
    with pytest.raises(ConfigError, match=f"more than the limit of {MAX_PARAMS:,}"):
        create_model("wrn-28-10", num_classes=10, input_shape=(3, 32, 32), width=100)


def test_an_honest_checkpoint_still_builds() -> None:
    model = build_model(_ckpt())
    assert model(torch.zeros(1, *SHAPE)).shape == (1, 3)
