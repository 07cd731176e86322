"""Hostile and clumsy input to export, verify, eval, report and the output folders of every command (issue 21).

Each row of :data:`CASES` is one case: what the user runs (``{...}`` are paths of the scene below, or the
constants above the table), the exit code and a fragment of the one-line message. ``PREPARE`` sets the scene of a case up, ``AFTER`` checks
what must have survived it. The scene is a tiny exported model: ``{ckpt}`` (its checkpoint), ``{exp}`` (its
export folder, with report.json recording ``{ckpt}`` relative to it), ``{npz}`` (16 labelled test images).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_export_safety import save_checkpoint, tree
from test_report_cmd import run_dir
from test_verify_safety import exported  # noqa: F401  (a module-scoped fixture: the export every case copies)

import akd_edge
from akd_edge.cli.main import cli
from akd_edge.core import files

SYN = "n=64,test=32,shape=1x12x12,classes=4"
"""The synthetic test split the scene's 4-class 1x12x12 model takes (a spec, passed as --data-dir)."""
QUICK_VERIFY = "--n 8 --square-queries 0 --no-latency"
QUICK_EVAL = f"--n 8 --steps 1 --no-plots --no-checks --no-calibration --data-dir {SYN}"
DEEP = "[" * 200_000 + "]" * 200_000
TEACHER = Path(akd_edge.__file__).parent / "assets" / "fmnist-teacher.pt"
"""A shipped run's checkpoint (compress needs the recipe of the run that trained the model)."""

# fmt: off
CASES = [
    # (issue case: what, akd-edge command, exit code, message fragment)
    ("1 re-export over user files", "export {ckpt} --out {mine} --no-int8 --no-web --data-dir {syn}", 2, "files akd-edge did not write"),
    ("1 re-export of an untouched export", "export {ckpt} --out {mine} --no-int8 --no-web --data-dir {syn}", 0, "wrote"),
    ("2 eval over the user's eval.json", "eval {proj}/model.pt {quick_eval}", 2, "not written by akd-edge"),
    ("2 eval --out over the user's eval.json", "eval {ckpt} --out {proj} {quick_eval}", 2, "not written by akd-edge"),
    ("2 eval --out over the user's plot", "eval {ckpt} --out {proj} {quick_eval}", 2, "reliability.png exists"),
    ("2 eval over its own eval.json", "eval {proj}/model.pt {quick_eval}", 0, "wrote"),
    ("3 verify: source.checkpoint = /etc/passwd", "verify {exp} --data {npz} {quick_verify}", 2, "is not an existing .pt file"),
    ("3 verify: source.checkpoint = another model", "verify {exp} --data {npz} {quick_verify}", 2, "has changed since the export"),
    ("3 verify: source checkpoint moved away", "verify {exp} --data {npz} {quick_verify}", 2, "pass --checkpoint"),
    ("3 verify: --checkpoint from the command line", "verify {exp} --data {npz} --checkpoint {ckpt} {quick_verify}", 0, "model.onnx"),
    ("3 verify: report without checkpoint SHA-256", "verify {exp} --data {npz} {quick_verify}", 2, "records no source checkpoint"),
    ("3 verify: --transfer none needs no checkpoint", "verify {exp} --data {npz} --transfer none {quick_verify}", 0, "--transfer none"),
    ("7b export: disk full", "export {ckpt} --out {mine} --no-int8 --no-web --data-dir {syn}", 1, "disk full while writing"),
    ("8 report: non-UTF-8 recipe.toml", "report {run} --out {report}", 2, "not UTF-8"),
    ("8 report: non-UTF-8 summary.json", "report {run} --out {report}", 2, "cannot read"),
    ("8 report: recipe.toml nested 200,000 deep", "report {run} --out {report}", 2, "nested too deeply"),
    ("8 report: report.json nested 200,000 deep", "report {exp} --out {report}", 2, "nested too deeply"),
    ("8 verify: report.json nested 200,000 deep", "verify {exp} --data {npz} {quick_verify}", 2, "nested too deeply"),
    ("9 eval --step-size nan", "eval {ckpt} --out {proj} --step-size nan {quick_eval}", 2, "step size"),
    ("9 eval --step-size inf", "eval {ckpt} --out {proj} --step-size inf {quick_eval}", 2, "step size"),
    ("9 eval --step-size -1", "eval {ckpt} --out {proj} --step-size -1 {quick_eval}", 2, "step size"),
    ("10 eval of a run still training", "eval {proj}/model.pt {quick_eval}", 2, "in use"),
    ("10 export --out symlink", "export {ckpt} --out {link} --no-int8 --no-web --data-dir {syn}", 2, "symbolic link"),
    ("10 eval --out symlink", "eval {ckpt} --out {link} {quick_eval}", 2, "symbolic link"),
    ("10 report --out symlink", "report {exp} --out {link}", 2, "symbolic link"),
    ("10 distill --out symlink", "distill -r fmnist-quickstart --out {link}", 2, "symbolic link"),
    ("10 compress --out symlink", "compress {teacher} --ratio 0.5 --out {link}", 2, "symbolic link"),
    ("10 run --out symlink", "run fmnist-quickstart --out {link}", 2, "symbolic link"),
]
# fmt: on


@dataclass
class Scene:
    """The paths a case's command names, all under one temporary folder (and the test's monkeypatch)."""

    root: Path
    monkeypatch: pytest.MonkeyPatch

    def __getattr__(self, name: str) -> Path:
        return self.root / {"ckpt": "tiny.pt", "exp": "export", "npz": "data.npz", "proj": "user/proj"}.get(name, name)

    def paths(self) -> dict[str, str]:
        names = ("ckpt", "exp", "npz", "proj", "mine", "run", "report", "link")
        constants = {"teacher": str(TEACHER), "syn": SYN, "quick_eval": QUICK_EVAL, "quick_verify": QUICK_VERIFY}
        return {name: str(getattr(self, name)) for name in names} | constants


def _edit_report(scene: Scene, **source: Any) -> None:
    path = scene.exp / "report.json"
    report = json.loads(path.read_text())
    report["source"] |= source
    path.write_text(json.dumps(report))


def _user_files(scene: Scene) -> None:
    """cp -a exp/base exp/mine; echo notes > exp/mine/notes.txt; mkdir exp/mine/app"""
    shutil.copytree(scene.exp, scene.mine, symlinks=True)
    (scene.mine / "notes.txt").write_text("notes\n")
    (scene.mine / "app").mkdir()
    (scene.mine / "app" / "main.swift").write_text("let model = ...\n")


def _project(scene: Scene, eval_json: str | None = None, png: bool = False) -> None:
    scene.proj.mkdir(parents=True)
    shutil.copy(scene.ckpt, scene.proj / "model.pt")
    if eval_json is not None:
        (scene.proj / "eval.json").write_text(eval_json)
    if png:
        (scene.proj / "reliability.png").write_bytes(b"my own figure")


def _own_eval(scene: Scene) -> None:
    _project(scene)
    command = f"eval {scene.proj}/model.pt {QUICK_EVAL}".split()
    assert CliRunner().invoke(cli, command).exit_code == 0


def _disk_full(scene: Scene) -> None:
    """An earlier export at --out, and a disk that fills up while the new report.json is written."""
    shutil.copytree(scene.exp, scene.mine)
    real = files.write_bytes_atomic

    def full(path: str | Path, data: bytes) -> Path:
        if Path(path).name != "report.json":
            return real(path, data)

        def write(fh: Any) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        return files.write_atomic(path, write)

    scene.monkeypatch.setattr(files, "write_bytes_atomic", full)


def _run_with(name: str, content: str | bytes) -> Callable[[Scene], None]:
    def prepare(scene: Scene) -> None:
        folder = run_dir(scene.root, "run")
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return prepare


def _training(scene: Scene) -> files.FolderLock:
    """A run still training in the checkpoint's folder: its process holds the folder's lock."""
    _project(scene)
    return files.FolderLock(scene.proj, "run directory").acquire()


def _link(scene: Scene) -> None:
    (scene.root / "target").mkdir()
    scene.link.symlink_to(scene.root / "target")


PREPARE: dict[str, Callable[..., Any]] = {
    "1 re-export over user files": _user_files,
    "1 re-export of an untouched export": lambda s: shutil.copytree(s.exp, s.mine),
    "2 eval over the user's eval.json": lambda s: _project(s, '{"mine": true}'),
    "2 eval --out over the user's eval.json": lambda s: _project(s, '{"format": "akd-edge-eval/2"}'),
    "2 eval --out over the user's plot": lambda s: _project(s, png=True),
    "2 eval over its own eval.json": _own_eval,
    "3 verify: source.checkpoint = /etc/passwd": lambda s: _edit_report(s, checkpoint="/etc/passwd"),
    "3 verify: source.checkpoint = another model": lambda s: save_checkpoint(s.ckpt),  # same path, other weights
    "3 verify: source checkpoint moved away": lambda s: s.ckpt.rename(s.root / "moved.pt"),
    "3 verify: --checkpoint from the command line": lambda s: _edit_report(s, checkpoint="/etc/passwd"),
    "3 verify: report without checkpoint SHA-256": lambda s: _edit_report(s, checkpoint_sha256=None),
    "3 verify: --transfer none needs no checkpoint": lambda s: s.ckpt.unlink(),
    "7b export: disk full": _disk_full,
    "8 report: non-UTF-8 recipe.toml": _run_with("recipe.toml", b"[run]\nname = '\xff\xfe'\n"),
    "8 report: non-UTF-8 summary.json": _run_with("summary.json", b'{"role": "\xff\x80"}'),
    "8 report: recipe.toml nested 200,000 deep": _run_with("recipe.toml", f"a = {DEEP}\n"),
    "8 report: report.json nested 200,000 deep": lambda s: (s.exp / "report.json").write_text(DEEP),
    "8 verify: report.json nested 200,000 deep": lambda s: (s.exp / "report.json").write_text(DEEP),
    "10 eval of a run still training": _training,
}
for _case in CASES:
    if "symlink" in _case[0]:
        PREPARE[_case[0]] = _link


def _unchanged(folder: str) -> Callable[[Scene, dict[str, bytes]], None]:
    """After the case: every file under ``folder`` (relative to the scene) is as it was."""

    def check(scene: Scene, before: dict[str, bytes]) -> None:
        now = tree(scene.root)
        assert {k: v for k, v in now.items() if k.startswith(f"{folder}/")} == {
            k: v for k, v in before.items() if k.startswith(f"{folder}/")
        }

    return check


def _nothing_through_the_link(scene: Scene, before: dict[str, bytes]) -> None:
    assert not any((scene.root / "target").iterdir())


def _manifest_written(scene: Scene, before: dict[str, bytes]) -> None:
    assert "model.onnx" in files.read_mark(scene.mine)["files"]


def _no_eval_json(scene: Scene, before: dict[str, bytes]) -> None:
    assert (scene.proj / "eval.json").exists() == ("user/proj/eval.json" in before)
    assert not (scene.proj / files.LOCK).exists() or "user/proj/" + files.LOCK in before


AFTER: dict[str, Callable[[Scene, dict[str, bytes]], None]] = {
    "1 re-export over user files": _unchanged("mine"),
    "1 re-export of an untouched export": _manifest_written,
    "2 eval over the user's eval.json": _unchanged("user/proj"),
    "2 eval --out over the user's eval.json": _unchanged("user/proj"),
    "2 eval --out over the user's plot": _unchanged("user/proj"),
    "7b export: disk full": _unchanged("mine"),
    "10 eval of a run still training": _no_eval_json,
    "10 distill --out symlink": _nothing_through_the_link,
    "10 compress --out symlink": _nothing_through_the_link,
}


@pytest.fixture
def scene(exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:  # noqa: F811
    """A fresh copy of the exported tiny model, its checkpoint and its test images, free to damage."""
    root = tmp_path / "w"
    shutil.copytree(exported.parent, root)
    return Scene(root, monkeypatch)


@pytest.mark.parametrize(("case", "command", "code", "message"), CASES, ids=[c[0] for c in CASES])
def test_case(case: str, command: str, code: int, message: str, scene: Scene, monkeypatch: pytest.MonkeyPatch) -> None:
    held = PREPARE[case](scene) if case in PREPARE else None
    before = tree(scene.root)
    monkeypatch.chdir(scene.root)
    try:
        result = CliRunner().invoke(cli, command.format(**scene.paths()).split(), env={"COLUMNS": "250"})
    finally:
        if isinstance(held, files.FolderLock):
            held.release()
    output = " ".join(result.output.split())
    assert result.exit_code == code, result.output
    assert message in output and "Traceback" not in output
    if code:
        assert result.output.count("error:") == 1, result.output  # one line, not a traceback
    if case in AFTER:
        AFTER[case](scene, before)


# -- what the table cannot show in one row ----------------------------------------------------------------


def test_verify_from_another_directory_finds_the_source_and_attacks_it(
    scene: Scene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report.json records the checkpoint relative to the export folder: verify from anywhere runs the transfer."""
    source = json.loads((scene.exp / "report.json").read_text())["source"]
    assert source["checkpoint"] == "../tiny.pt" and source["checkpoint_sha256"] == files.sha256_file(scene.ckpt)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    command = f"verify {scene.exp} --data {scene.npz} --transfer fast --json {QUICK_VERIFY}".split()
    result = CliRunner().invoke(cli, command)
    assert result.exit_code == 0, result.output
    verify = json.loads(result.stdout)
    assert "skipped" not in verify["settings"]["transfer"]
    assert verify["models"]["model.onnx"]["transfer_acc"] is not None


def test_verify_takes_the_data_folder_from_the_command_line_never_from_the_file(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    import akd_edge.data

    report = json.loads((scene.exp / "report.json").read_text())
    report["data"]["data_dir"] = "/etc"
    (scene.exp / "report.json").write_text(json.dumps(report))
    asked: list[str] = []

    def spy(name: str, data_dir: str = "", n: int = 0, **kwargs: Any) -> Any:
        asked.append(data_dir)
        raise akd_edge.core.errors.DataError("stop here")

    monkeypatch.setattr(akd_edge.data, "load_test_split", spy)
    for extra, expected in ([], ""), (["--data-dir", SYN], SYN):
        result = CliRunner().invoke(cli, ["verify", str(scene.exp), "--transfer", "none", *extra])
        assert result.exit_code == 2 and "stop here" in result.output
        assert asked.pop() == expected


def test_a_full_disk_is_one_line_in_any_command(tmp_path: Path) -> None:
    """user_errors turns ENOSPC and EDQUOT, wherever they are raised, into one line and exit 1; write_atomic names
    the file it was writing, and leaves no temp file behind."""
    import click

    from akd_edge.cli.common import user_errors

    def full(fh: Any) -> None:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    @click.command()
    @user_errors
    def command() -> None:
        files.write_atomic(tmp_path / "best.pt", full)

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert (
        f"disk full while writing {tmp_path / 'best.pt'}: free space and re-run (nothing earlier was removed)" in text
    )
    assert list(tmp_path.iterdir()) == []


def test_reexport_manifest_lists_what_the_export_wrote(scene: Scene) -> None:
    """The mark of an export lists its files; anything beside them, even deep in web/, is the user's."""
    from akd_edge.export import folder as export_folder

    listed = files.read_mark(scene.exp)["files"]
    assert "report.json" in listed and "model.onnx" in listed and files.MARK not in listed
    assert export_folder.foreign(scene.exp) == []
    (scene.exp / "web" / "mine.js").write_text("x")
    (scene.exp / "data").mkdir()
    (scene.exp / "data" / "x.bin").write_bytes(b"x")
    (scene.exp / ".report.json.abcd1234.tmp").write_text("left by a killed verify")
    assert export_folder.foreign(scene.exp) == ["data/", "web/mine.js"]
    assert export_folder.replaceable(scene.exp) is None
