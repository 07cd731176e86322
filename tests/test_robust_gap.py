"""benchmarks/robust_gap.py: training-split against test-split accuracy of trained runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import akd_edge as ae

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "run": {"name": "gap", "seed": 0, "device": "cpu"},
    "data": {
        "name": "synthetic",
        "data_dir": "n=256,test=64,shape=1x8x8,classes=3",
        "val_size": 64,
        "batch_size": 64,
        "eval_batch_size": 64,
    },
    "model": {"name": "cnn-student"},
    "method": {"name": "at"},
    "train": {"epochs": 2, "attack": {"eps": 0.1, "steps": 2}},
    "eval": {"attack": {"eps": 0.1, "steps": 2}},
}


def test_gap_is_train_minus_test_on_the_runs_own_splits(tmp_path: Path) -> None:
    ae.train_teacher(TINY, run_dir=tmp_path / "runs" / "at" / "seed0")
    out = tmp_path / "gap.json"
    args = [str(tmp_path / "runs/at/seed0"), "--n", "40", "--steps", "3", "--out", str(out)]
    script = str(ROOT / "benchmarks/robust_gap.py")
    done = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    (figures,) = result["runs"].values()
    assert result["n"] == 40 and result["steps"] == 3
    assert figures["train"]["n"] == 40 and figures["test"]["n"] == 40
    for split in ("train", "test"):
        assert 0 <= figures[split]["pgd"] <= figures[split]["clean"] <= 1
    assert figures["gap_pgd"] == pytest.approx(figures["train"]["pgd"] - figures["test"]["pgd"])
    assert figures["gap_clean"] == pytest.approx(figures["train"]["clean"] - figures["test"]["clean"])
    assert figures["attack"]["steps"] == 3 and figures["attack"]["eps"] == pytest.approx(0.1)
    assert "| gap PGD |" in done.stdout and str(tmp_path / "runs/at") in done.stdout
