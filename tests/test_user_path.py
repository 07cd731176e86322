"""benchmarks/user_path.py on tiny settings: every step of the README's path is timed and published with the machine.

Synthetic 28x28 images, one epoch, 48 test images, Square with 10 queries, no transfer attack: about half a
minute on one core. Figures are checked for presence and shape, never for speed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quick_user_path_times_each_step_and_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("bench_user_path", ROOT / "benchmarks" / "user_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory's runs/
    out = tmp_path / "user_path.json"
    assert module.main(["--quick", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    result = json.loads(out.read_text())
    assert result["quick"] and set(result["steps"]) == {"demo", "export", "verify", "run"}
    for step in result["steps"].values():
        assert step["seconds"] >= 0 and len(step["load_average"]) == 2
    demo = result["steps"]["demo"]["test"]
    assert demo["n"] == 48 and demo["attack"]["steps"] == 20 and 0 <= demo["robust_acc"] <= demo["clean_acc"] <= 1
    assert result["steps"]["export"]["recommended_for_speed"] in ("int8", "fp32")
    assert set(result["steps"]["verify"]["robust_acc"]) == {"model.onnx", "model.int8.onnx"}
    stages = result["steps"]["run"]["stages"]
    assert [s["key"] for s in stages] == [
        "distill",
        "compress/fmnist-quickstart-pruned-0.5",
        "export/fmnist-quickstart",
        "verify/fmnist-quickstart",
        "export/fmnist-quickstart-pruned-0.5",
        "verify/fmnist-quickstart-pruned-0.5",
        "report",
    ]
    assert all(s["ran"] and s["seconds"] >= 0 for s in stages)
    machine = result["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and isinstance(machine["cpu_flags"], list)
    assert not (tmp_path / "runs").exists()
    assert (tmp_path / "work" / "fmnist-quickstart" / "best.pt").is_file()  # run.out_dir is the work folder
