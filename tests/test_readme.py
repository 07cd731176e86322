"""The READMEs agree with the results files and with the tool: every measured number is rendered from a
results file (``benchmarks/readme_numbers.py --check``), and every Python and shell code block runs.

Code blocks run on tiny settings: the recipes they name are swapped for tiny synthetic ones, and each command
gets the options of :data:`SHELL_SUFFIX` appended (a later option wins in click), Python blocks the rewrites of
:data:`PYTHON_REWRITES`. A block that cannot run here (a GPU, a cluster, installing packages, a long run)
carries ``<!-- code-test: skip (why) -->`` on the line above it; a block without one must run.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner

from akd_edge.cli.main import cli
from akd_edge.config import RECIPES_DIR

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", ROOT / "export" / "README.md")
FENCE = re.compile(
    r"(?:<!-- code-test: skip \((?P<skip>.+?)\) -->\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```$", re.DOTALL | re.M
)
NOT_RUN = {
    "kotlin": "Android",
    "swift": "iOS",
    "js": "React Native",
    "html": "a browser: tests/test_web_export.py",
}
"""Languages the test does not run, and what they need."""
SYNTH = "n=448,test=64,shape=1x28x28,classes=10,noise=0.3"
SHELL_SUFFIX = {
    "eval": ["--n", "32", "--steps", "2"],
    "compress": ["--epochs", "1", "--n", "32", "--aa-n", "16"],
    "export": ["--calib", "32", "--n", "64"],
    "verify": ["--n", "16", "--square-queries", "10", "--transfer", "none", "--no-latency"],
}
"""Options appended to each command of a shell block: a later option replaces the block's own."""
PYTHON_REWRITES = (
    ('"fmnist-quickstart"', "TINY_QUICKSTART"),
    ("n=500)", "n=32)"),
    ("ratio=0.5)", "ratio=0.5, epochs=1, evaluation=None)"),
    ("ae.verify(folder, n=200)", 'ae.verify(folder, n=16, square_queries=10, transfer="none", latency=False)'),
)
"""(text in a Python block, its tiny replacement); ``TINY_QUICKSTART`` is the tiny recipe's path."""


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    body: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start("body"))
            found.append(Block(str(path.relative_to(ROOT)), line, match["lang"], match["body"], match["skip"]))
    return found


BLOCKS = blocks()
RUN = [b for b in BLOCKS if b.skip is None and b.lang in ("", "bash", "python")]


def _readme_numbers():
    spec = importlib.util.spec_from_file_location("readme_numbers", ROOT / "benchmarks" / "readme_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- numbers ------------------------------------------------------------------------------------------------


def test_every_number_block_matches_its_results_file() -> None:
    numbers = _readme_numbers()
    for path in DOCS:
        assert numbers.stale_blocks(path.read_text()) == [], f"{path}: run python benchmarks/readme_numbers.py"


def test_check_finds_a_typed_number_and_render_fixes_it() -> None:
    numbers = _readme_numbers()
    good = numbers.render("reaches <!-- results:recipe-test fmnist-quickstart --><!-- /results --> here")
    assert re.search(r"\d+\.\d% clean / \d+\.\d% PGD-20", good)
    typed = re.sub(r"\d+\.\d% clean", "99.9% clean", good)
    assert numbers.stale_blocks(typed) == ["recipe-test fmnist-quickstart"]
    assert numbers.render(typed) == good
    assert numbers.main(["--check", str(ROOT / "README.md")]) == 0


def _results_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, numbers, files: dict[str, object]) -> Path:
    """A project root whose ``benchmarks/results/`` holds ``files`` (JSON objects or text), for ``numbers``."""
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    for name, content in files.items():
        (results / name).write_text(content if isinstance(content, str) else json.dumps(content))
    monkeypatch.setattr(numbers, "ROOT", tmp_path)
    return results


def test_a_renderer_names_the_missing_file_or_key_instead_of_printing_none(tmp_path, monkeypatch) -> None:
    numbers = _readme_numbers()
    forward = {"teacher": "t", "arch": "a", "batch": 1, "threads": 1, "repeats": 1, "ms_per_step": {"torch": 2.0}}
    _results_root(tmp_path, monkeypatch, numbers, {"teacher_forward.json": forward, "gpu.md": "no table here\n"})
    with pytest.raises(KeyError, match="onnx_fast_path_speedup"):
        numbers.render_block("teacher-forward")
    with pytest.raises(KeyError, match="benchmarks/results/robust_gap.json does not exist"):
        numbers.render_block("robust-gap")
    with pytest.raises(KeyError, match="holds no table"):
        numbers.render_block("gpu-throughput gpu")
    with pytest.raises(KeyError, match="unknown results block"):
        numbers.render_block("no-such-renderer")


def test_differences_round_half_away_from_zero() -> None:
    """Accuracies on n images differ by multiples of 100/n points: a half must not round by binary accident."""
    points = _readme_numbers()._points
    assert [points(0.0065), points(-0.0065), points(-0.0005), points(0.0), points(0.02)] == [
        "+0.7",
        "-0.7",
        "-0.1",
        "0.0",
        "+2.0",
    ]


def test_study_values_and_differences_come_from_the_cells_of_the_table(tmp_path, monkeypatch) -> None:
    numbers = _readme_numbers()
    import method_study  # a sibling script: readme_numbers put benchmarks/ on the path

    def cell(variant: str, seed: int, clean: float, pgd: float) -> dict:
        train = {"epochs": 4, "best_epoch": 4, "train_time_s": 60, "val_time_s": 0, "params": 10, "method": variant}
        settings = {"attacks": ["pgd"], "n": 1000}
        evaluation = {"settings": settings, "n": 1000, "clean": clean, "robust": pgd, "attacks": {"pgd": {"acc": pgd}}}
        return {"variant": variant, "seed": seed, "status": "done", "train": train, "eval": evaluation}

    cells = [
        cell("at", 0, 0.80, 0.70),
        cell("at", 1, 0.82, 0.69),
        cell("akd", 0, 0.83, 0.705),
        cell("akd", 1, 0.84, 0.68),
    ]
    study = {"format": method_study.FORMAT, "cells": {f"{c['variant']}/seed{c['seed']}": c for c in cells}}
    results = _results_root(tmp_path, monkeypatch, numbers, {"s.json": study})
    monkeypatch.setattr(method_study, "RESULTS_DIR", results)
    assert numbers.render_block("study-value s akd clean") == "83.5 ± 0.7"
    assert numbers.render_block("study-diff s akd at clean") == "+2.5"
    assert numbers.render_block("study-seed-diffs s akd at pgd") == "+0.5, -1.0"
    with pytest.raises(KeyError, match="no 'aa-fast'"):
        numbers.render_block("study-value s akd aa-fast")
    with pytest.raises(KeyError, match="no finished cell of 'trades'"):
        numbers.render_block("study-value s trades clean")


def test_gpu_rows_pair_each_step_with_its_plain_loop(tmp_path, monkeypatch) -> None:
    numbers = _readme_numbers()
    table = (
        "Device: GPU X (cuda); CPU flags f, 4 torch threads, torch 9; bf16, channels_last True, compile False; peak\n\n"
        "| configuration | images/s | GFLOP per step | GFLOP/s | share of matmul peak | akd-edge / plain |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| student net, AKD PGD-10 from t, batch 64 | 1500 | 1 | 1 | 9% |  |\n"
        "| plain eager loop: student net, AKD PGD-10 from t, batch 64 | 1000 | 1 | 1 | 6% | 1.50x |\n"
    )
    _results_root(tmp_path, monkeypatch, numbers, {"gpu.md": table})
    rendered = numbers.render_block("gpu-throughput gpu")
    assert "| net, 64 | bf16, channels_last, eager | 1,500 | 1,000 | 1.50x | 9% | `gpu.md` |" in rendered
    assert "GPU X (cuda), 4 torch threads, torch 9" in rendered


def test_an_int8_column_matching_two_rows_is_an_error(tmp_path, monkeypatch) -> None:
    numbers = _readme_numbers()
    row = {"settings": {"float_logits": True}, "clean": {"agree": 0.99, "agree_ci95": [0.98, 1], "int8_ties": 0}}
    row["adversarial"] = {"agree": 0.99}
    model = {"arch": "a", "fp32_clean_acc": 0.8, "n_test": 10, "n_adv": 5, "pgd_steps": 20, "rows": [row, row]}
    result = {"grid": "stem", "seed": 0, "machine": "m", "models": {"m": model}}
    _results_root(tmp_path, monkeypatch, numbers, {"int8.json": result})
    monkeypatch.setitem(numbers.INT8_COLUMNS, "stem", [("float logits", {"float_logits": True})])
    with pytest.raises(ValueError, match="2 rows have the settings"):
        numbers.render_block("int8-agreement int8")


def test_first_screen_says_what_the_demo_takes_and_what_comes_next() -> None:
    readme = (ROOT / "README.md").read_text()
    headings = re.findall(r"^## (.+)$", readme, re.M)
    assert headings[:4] == ["Quickstart", "Workflow", "Few labels? Use your unlabelled images", "Python API"]
    assert headings.index("Expected results") > headings.index("Workflow"), "research results below the workflow"
    first = readme[: readme.index("## Workflow")]
    assert "make demo" in first and "<!-- results:demo -->" in first and "akd-edge export" in first
    assert "a few minutes" not in first
    assert "my_robust_model" not in readme
    assert not re.search(r"akd-edge export \S+ --int8\b", readme), "int8 is the default"


# -- code blocks ----------------------------------------------------------------------------------------------


def test_every_block_runs_or_says_why_not() -> None:
    for block in BLOCKS:
        runs = block.lang in ("", "bash", "python", "toml") or block.lang in NOT_RUN
        assert block.skip is not None or runs, f"{block.id}: a {block.lang!r} block needs a code-test marker"
    assert len(RUN) >= 6


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "toml"], ids=lambda b: b.id)
def test_toml_blocks_parse(block: Block) -> None:
    assert tomllib.loads(block.body)


def _tiny_recipe(folder: Path, name: str, **changes: object) -> Path:
    recipe = tomllib.loads((RECIPES_DIR / f"{name}.toml").read_text())
    recipe.pop("expected", None)
    few = {k: 64 if k == "labeled" else v for k, v in recipe["data"].items() if k in ("labeled", "unlabeled")}
    recipe["data"] = {"name": "synthetic", "data_dir": SYNTH, "val_size": 64, "batch_size": 64, "eval_batch_size": 64}
    recipe["data"] |= few  # a few-label recipe keeps 64 labels and its unlabelled images
    recipe["train"] = {**recipe["train"], "epochs": 1, "attack": {**recipe["train"]["attack"], "steps": 1}}
    recipe["eval"] = {"val_samples": 32, "attack": {**recipe["eval"]["attack"], "steps": 2}}
    path = folder / f"tiny-{name}.toml"
    path.write_text(tomli_w.dumps(recipe))
    return path


def _run_shell_line(line: str, recipes: dict[str, Path]) -> None:
    args = shlex.split(line, comments=True)
    if not args:
        return
    assert args[0] == "akd-edge", f"{line!r}: the test runs akd-edge commands only; mark the block"
    previous = ["", *args[:-1]]
    args = [str(recipes.get(a, a)) if p in ("--recipe", "-r") else a for p, a in zip(previous, args, strict=True)]
    command = args[1]
    result = CliRunner().invoke(cli, [*args[1:], *SHELL_SUFFIX.get(command, [])], env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{line}\n{result.output}"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """A folder where `make demo` and an export have run, on tiny settings: runs/fmnist-demo, runs/fmnist-quickstart,
    their exports, and my-images.npz for verify --data."""
    import os

    folder = tmp_path_factory.mktemp("readme")
    names = ("fmnist-demo", "fmnist-quickstart", "fmnist-teacher", "fmnist-fewlabel")
    recipes = {name: _tiny_recipe(folder, name) for name in names}
    old = Path.cwd()
    os.chdir(folder)
    try:
        for student in ("fmnist-demo", "fmnist-quickstart"):
            _run_shell_line(f"akd-edge distill --recipe {student} --reuse", recipes)  # what `make demo` runs
            _run_shell_line(f"akd-edge export runs/{student}", recipes)
    finally:
        os.chdir(old)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 1, 28, 28), dtype=np.uint8)
    np.savez(folder / "my-images.npz", images=images, labels=rng.integers(0, 10, 16))
    return folder, recipes


@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_code_block_runs(
    block: Block, base: tuple[Path, dict[str, Path]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, recipes = base
    work = tmp_path / "work"
    shutil.copytree(folder, work)
    monkeypatch.chdir(work)
    if block.lang == "python":
        code = block.body
        for text, tiny in PYTHON_REWRITES:
            code = code.replace(text, tiny)
        exec(compile(code, block.id, "exec"), {"TINY_QUICKSTART": str(recipes["fmnist-quickstart"])})
        return
    for line in block.body.splitlines():
        _run_shell_line(line, recipes)
