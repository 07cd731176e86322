"""Shared test settings: one torch thread (tiny models gain nothing from more), deterministic seeds."""

from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)  # at import, so module-scoped fixtures run on one thread too


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """On a busy 2-core machine OpenMP barriers make 2 threads far slower than 1 for these tiny models; code
    under test may change the count (``--threads``, ``run.threads``), so every test starts at one."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def run_with_contributing_example(tmp_path, target: str, script: str, command: str):
    """CONTRIBUTING.md's worked example for ``target`` (``akd_edge/models/tinynet.py``...), added as one file to a
    copy of the package in ``tmp_path``; runs ``script`` (Python) and ``akd-edge <command>`` there and returns the
    two finished processes. Proves that adding it needs no other file."""
    import os
    import re
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    text = (root / "CONTRIBUTING.md").read_text()
    example = re.search(rf"```python\n# {re.escape(target)}\n(.*?)```", text, re.S)
    assert example, f"CONTRIBUTING.md lost its worked example {target}"
    shutil.copytree(root / "akd_edge", tmp_path / "akd_edge", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / target).write_text(example.group(1))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(tmp_path)}
    runs = [[sys.executable, "-c", script], [sys.executable, "-m", "akd_edge", command]]
    return [subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True) for args in runs]
