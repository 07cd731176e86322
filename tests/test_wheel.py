"""A built wheel works on its own: recipes and assets ship inside it, and `akd-edge distill` runs from it.

The wheel is built offline from a copy of the sources (no build isolation: setuptools comes from this
environment, and the shared checkout gets no build/ or egg-info), installed non-editable into a fresh venv
that borrows torch and the other dependencies from the system site-packages (or from the venv the tests run in), and run from a temp folder so
the repository is not on sys.path. About 40 s on 2 CPU cores.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.name=synthetic",
    'data.data_dir="n=64,test=16,shape=1x28x28,classes=10"',
    "data.val_size=16",
    "data.train_subset=16",
    "data.batch_size=16",
    "data.eval_batch_size=16",
    "train.epochs=1",
    "train.attack.steps=1",
    "eval.attack.steps=1",
    "eval.val_samples=16",
    "run.device=cpu",
    "run.threads=1",
]


def _run(cmd: list[str | Path], cwd: Path, timeout: int = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", AKD_EDGE_DATA=str(cwd / "no-data"))
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{cmd} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with the freshly built wheel installed (not editable); its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    shutil.copytree(REPO / "akd_edge", src / "akd_edge", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", src],
        root,
    )
    (wheel,) = (root / "dist").glob("akd_edge-*.whl")
    _run([sys.executable, "-m", "venv", "--system-site-packages", root / "venv"], root)
    bin_dir = root / "venv" / "bin"
    if sys.prefix != sys.base_prefix:  # the tests run in a venv: its packages, not the system's, are the deps
        site = _run([bin_dir / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root)
        ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
        (Path(site.stdout.strip()) / "_test_deps.pth").write_text("".join(f"{path}\n" for path in ours))
    _run([bin_dir / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], root)
    return bin_dir


def test_the_installed_package_is_the_wheel_with_its_recipes(venv: Path, tmp_path: Path) -> None:
    code = (
        "import akd_edge, akd_edge.config as c\n"
        "print(akd_edge.__file__)\n"
        "print(sorted(c.shipped_recipes()))\n"
        "print(c.recipe_results('fmnist-akd') is not None)\n"
    )
    where, recipes, results = _run([venv / "python", "-c", code], tmp_path).stdout.splitlines()
    assert Path(where).resolve().is_relative_to(venv.parent.resolve()), f"imported {where}, not the wheel"
    assert "fmnist-quickstart" in recipes and "cifar10-akd-resnet18" in recipes
    assert results == "True"
    listing = _run([venv / "akd-edge", "recipes"], tmp_path).stdout
    assert "fmnist-quickstart" in listing


def test_a_one_batch_distill_runs_from_the_wheel(venv: Path, tmp_path: Path) -> None:
    overrides = [arg for item in TINY for arg in ("--set", item)]
    _run(
        [venv / "akd-edge", "distill", "--recipe", "fmnist-quickstart", *overrides, "--out", tmp_path / "run"], tmp_path
    )
    assert (tmp_path / "run" / "best.pt").is_file()
    assert 'name = "synthetic"' in (tmp_path / "run" / "recipe.toml").read_text()
