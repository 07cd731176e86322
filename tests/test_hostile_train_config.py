"""Hostile and clumsy input to training, recipes, run folders and checkpoints (issue 21, cases 4-9).

Each row of :data:`CASES` is one case: what the user runs (``{...}`` are paths of the scene below), the exit
code and a fragment of the one-line message. ``PREPARE`` sets the scene of a case up, ``AFTER`` checks what
must hold afterwards. The scene: ``{recipe}`` (a tiny 1-epoch recipe on synthetic data), ``{run}`` (a copy of
a finished run of it), ``{out}`` (a new folder), ``{data}`` (a dataset folder), ``{ckpt}`` (a crafted
checkpoint of the run's model).
"""

from __future__ import annotations

import errno
import math
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from test_data import make_idx_dataset
from test_train_rundir import finished, tiny  # noqa: F401  (finished: a module-scoped fixture, the run copied)

from akd_edge.cli.main import cli
from akd_edge.config import MAX_LR, AttackConfig, MethodConfig, OptimConfig, TeacherSpec, load_recipe, read_toml
from akd_edge.core.errors import ConfigError
from akd_edge.core.files import MARK
from akd_edge.models.checkpoint import load_checkpoint, save_atomic
from akd_edge.train import loop

EVAL = "--n 8 --steps 1 --no-plots --no-checks --no-calibration"
HUGE = [1, 1, 200_000, 200_000]
"""A pruning example of 4e10 floats: 160 GB, had it been allocated."""

# fmt: off
CASES = [
    # (issue case: what, akd-edge command, exit code, message fragment)
    ("4 --resume: recipe.toml names model this:x", "distill --resume {run}", 2, "(here 'this') only when you allow it"),
    ("4 --resume: recipe.toml names a teacher factory", "distill --resume {run}", 2, "pass --allow-code"),
    ("4 --resume --allow-code of an honest run", "distill --resume {run} --allow-code", 0, "run directory"),
    ("5 checkpoint: pruning example of 160 GB", f"eval {{ckpt}} {EVAL}", 2, "example_shape [1, 1, 200000, 200000]"),
    ("6 run.threads=100000", "distill -r {recipe} --out {out} --set run.threads=100000", 2, "run.threads=100000: must be from 0"),
    ("6 --threads=100000 of eval", f"eval {{run}} {EVAL} --threads 100000", 2, "--threads=100000: must be from 0"),
    ("7a disk full before the first checkpoint: start again", "distill -r {recipe} --out {run}", 0, "run directory"),
    ("7a disk full before the first checkpoint: --resume", "distill --resume {run}", 2, "start it again with --out"),
    ("7a a finished run without last.pt stays refused", "distill -r {recipe} --out {run}", 2, "finished akd-edge run"),
    ("8 run.seed of 23 digits", "distill -r {recipe} --out {out} --set run.seed=99999999999999999999999", 2, "run.seed: must fit in 64 bits"),
    ("8 train.optim.lr=1e300", "distill -r {recipe} --out {out} --set train.optim.lr=1e300", 2, "train.optim.lr: must be at most"),
    ("8 train.optim.weight_decay=1e300", "distill -r {recipe} --out {out} --set train.optim.weight_decay=1e300", 2, "weight_decay: must be in [0, 1]"),
    ("8 IDX files of 0 images", "distill -r {recipe} --out {out} --set data.name='fashion-mnist' --data-dir {data}", 2, "holds no images"),
    ("8 non-UTF-8 recipe via -r", "distill -r {recipe} --out {out}", 2, "is not UTF-8 text (byte 0xe9"),
    ("8 non-UTF-8 recipe.toml via --resume", "distill --resume {run}", 2, "is not UTF-8 text (byte 0xe9"),
    ("8 checkpoint: arch.mean = 'x'", f"eval {{ckpt}} {EVAL}", 2, "normalisation mean must be a finite number"),
    ("8 checkpoint: pruning entry without example_shape", f"eval {{ckpt}} {EVAL}", 2, "example_shape None, expected [1, channels"),
    ("8 checkpoint: pruning entry with history = 5", f"eval {{ckpt}} {EVAL}", 2, "pruning history is not a list"),
    ("8 last.pt with rng = 'abc'", "distill --resume {run}", 2, "resume state is damaged"),
    ("9 train.optim.gamma=-5, multistep", "distill -r {recipe} --out {out} --set train.optim.schedule='multistep' --set train.optim.gamma=-5", 2, "train.optim.gamma: must be in (0, 1]"),
]
# fmt: on


@dataclass
class Scene:
    """The paths a case's command names, all under one temporary folder, and the finished run to copy."""

    root: Path
    finished: Path
    case: str

    def __getattr__(self, name: str) -> Path:
        return self.root / {"recipe": "r.toml", "ckpt": "crafted.pt"}.get(name, name)

    def paths(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in ("recipe", "run", "out", "data", "ckpt")}

    def copy_run(self) -> Path:
        return Path(shutil.copytree(self.finished, self.run))

    def craft(self, **changes: Any) -> None:
        """``{ckpt}``: the run's best.pt with ``changes`` (``arch`` entries merged into its arch)."""
        ckpt = {k: v for k, v in load_checkpoint(self.finished, "best").items() if k != "path"}
        arch = {**ckpt["arch"], **changes.pop("arch", {})}
        save_atomic({**ckpt, "arch": arch, **changes}, self.ckpt)


PREPARE: dict[str, Callable[[Scene], None]] = {}
AFTER: dict[str, Callable[[Scene], None]] = {}


def prepare(*cases: str) -> Callable[[Callable[[Scene], None]], Callable[[Scene], None]]:
    def register(func: Callable[[Scene], None]) -> Callable[[Scene], None]:
        PREPARE.update(dict.fromkeys(cases, func))
        return func

    return register


def after(*cases: str) -> Callable[[Callable[[Scene], None]], Callable[[Scene], None]]:
    def register(func: Callable[[Scene], None]) -> Callable[[Scene], None]:
        AFTER.update(dict.fromkeys(cases, func))
        return func

    return register


def _pruning(**entry: Any) -> dict[str, Any]:
    return {"pruning": {"format": "akd-edge-pruning/1", "history": [], "example_shape": [1, 1, 8, 8], **entry}}


CRAFTED = {
    "5 checkpoint: pruning example of 160 GB": _pruning(example_shape=HUGE),
    "8 checkpoint: arch.mean = 'x'": {"arch": {"mean": "x"}},
    "8 checkpoint: pruning entry without example_shape": {"pruning": {"format": "akd-edge-pruning/1", "history": []}},
    "8 checkpoint: pruning entry with history = 5": _pruning(history=5),
}


@prepare("4 --resume: recipe.toml names model this:x", "4 --resume: recipe.toml names a teacher factory")
def _run_naming_this(scene: Scene) -> None:
    run = scene.copy_run()
    recipe = read_toml(run / "recipe.toml")
    recipe["model"]["name"] = "this:x"
    if "teacher" in scene.case:
        recipe["model"]["name"] = "cnn-student"
        recipe["method"]["name"] = "akd"
        recipe["teachers"] = [{"path": str(scene.finished), "factory": "this:x"}]
    (run / "recipe.toml").write_text(tomli_w.dumps(recipe))
    sys.modules.pop("this", None)


@after("4 --resume: recipe.toml names model this:x", "4 --resume: recipe.toml names a teacher factory")
def _this_not_imported(scene: Scene) -> None:
    assert "this" not in sys.modules, "the module named by the run folder's recipe.toml was imported"


@prepare(
    "4 --resume --allow-code of an honest run", "8 non-UTF-8 recipe.toml via --resume", "6 --threads=100000 of eval"
)
def _copied_run(scene: Scene) -> None:
    run = scene.copy_run()
    if "UTF-8" in scene.case:
        (run / "recipe.toml").write_bytes(b'description = "caf\xe9"\n' + (run / "recipe.toml").read_bytes())


@prepare("8 last.pt with rng = 'abc'")
def _last_with_bad_rng(scene: Scene) -> None:
    run = scene.copy_run()
    last = {k: v for k, v in load_checkpoint(run, "last").items() if k != "path"}
    save_atomic({**last, "rng": "abc"}, run / "last.pt")


def _write_recipe(scene: Scene, **over: object) -> None:
    scene.recipe.write_text(tomli_w.dumps(tiny(scene.root, **over)))


@prepare(*(case for case, command, _, _ in CASES if "-r {recipe}" in command))
def _recipe_file(scene: Scene) -> None:
    _write_recipe(scene, train__checkpoint_every=0)
    if "UTF-8" in scene.case:
        scene.recipe.write_bytes(b'description = "caf\xe9"\n' + scene.recipe.read_bytes())
    if "0 images" in scene.case:
        make_idx_dataset(scene.data, n_train=0, n_test=0)


@after(*(case for case, command, code, _ in CASES if "--out {out}" in command and code == 2))
def _nothing_made(scene: Scene) -> None:
    """A refused recipe makes no folder; bad data is found after the folder is claimed, which then holds only
    what a new start may replace."""
    assert not scene.out.exists() or {p.name for p in scene.out.iterdir()} <= {MARK, "recipe.toml"}
    assert not scene.out.exists() or "IDX" in scene.case


@prepare("7a disk full before the first checkpoint: start again", "7a disk full before the first checkpoint: --resume")
def _disk_full_at_last_pt(scene: Scene) -> None:
    """``{run}``: a run whose disk filled up when it wrote its first last.pt, at the end of epoch 1 (after
    best.pt, epochs/epoch-001.pt and the epoch's metrics)."""
    _write_recipe(scene, train__checkpoint_every=0)
    save = loop.save_atomic

    def full(obj: dict[str, Any], path: str | Path) -> Path:
        if Path(path).name == "last.pt":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(obj, path)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "save_atomic", full)
        with pytest.raises(OSError, match="No space left"):
            loop.train_run(load_recipe(read_toml(scene.recipe)), scene.run)
    assert {p.name for p in scene.run.iterdir()} >= {"best.pt", "epochs", "metrics.jsonl"}
    assert not (scene.run / "last.pt").exists()


@after("7a disk full before the first checkpoint: start again")
def _one_clean_run(scene: Scene) -> None:
    records = [line for line in (scene.run / "metrics.jsonl").read_text().splitlines() if line]
    assert len(records) == 2, "the failed start's metrics were mixed into the new run's"
    assert load_checkpoint(scene.run, "last")["epoch"] == 1


@prepare("7a a finished run without last.pt stays refused")
def _finished_without_last(scene: Scene) -> None:
    run = scene.copy_run()
    (run / "last.pt").unlink()
    _write_recipe(scene, train__checkpoint_every=0)


@after("7a a finished run without last.pt stays refused", "8 last.pt with rng = 'abc'")
def _run_kept(scene: Scene) -> None:
    assert (scene.run / "best.pt").read_bytes() == (scene.finished / "best.pt").read_bytes()


@pytest.mark.parametrize(("case", "command", "code", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_case(case: str, command: str, code: int, fragment: str, finished: Path, tmp_path: Path) -> None:  # noqa: F811
    scene = Scene(tmp_path, finished, case)
    if case in CRAFTED:
        scene.craft(**CRAFTED[case])
    else:
        PREPARE[case](scene)
    result = CliRunner().invoke(cli, shlex.split(command.format(**scene.paths())))
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == code, output
    assert fragment in output and "Traceback" not in output, output
    if code == 2:  # one line: ours ("error: ...") or click's ("Error: Invalid value for ...")
        assert len(re.findall(r"\berror:", output, re.IGNORECASE)) == 1, output
    if case in AFTER:
        AFTER[case](scene)


# -- dataclasses built in Python get the same checks as recipes -----------------------------------------

PYTHON_CASES = [
    # (what is built, message fragment)
    (lambda: OptimConfig(lr=1e300), "optim.lr: must be at most"),
    (lambda: OptimConfig(grad_clip=math.inf), "optim.grad_clip: must be a finite number"),
    (lambda: OptimConfig(schedule="multistep", gamma=-5), "optim.gamma: must be in (0, 1]"),
    (lambda: OptimConfig(schedule="multistep", gamma=0.0), "optim.gamma: must be in (0, 1]"),
    (lambda: AttackConfig(step_size=math.inf), "attack.step_size: must be a finite number"),
    (lambda: MethodConfig(temperature=math.nan), "method.temperature: must be a finite number"),
    (lambda: TeacherSpec(path="t", weight=math.inf), "teachers.weight: must be a finite number"),
]


@pytest.mark.parametrize(("build", "fragment"), PYTHON_CASES, ids=[f for _, f in PYTHON_CASES])
def test_python_built_configs_are_checked(build: Callable[[], object], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build()
    assert fragment in str(err.value)


def test_edges_that_stay_allowed() -> None:
    """The bounds leave every sensible value: a decaying gamma of 1, the largest rate, a negative seed."""
    recipe = load_recipe(tiny(Path(".")), ["train.optim.gamma=1", f"train.optim.lr={MAX_LR}", "run.seed=-1"])
    assert (recipe.train.optim.gamma, recipe.train.optim.lr, recipe.run.seed) == (1.0, MAX_LR, -1)
