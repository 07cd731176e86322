"""The pipeline folder of ``akd-edge run``, and the distillation run it reuses, resumes or starts.

The pipeline folder (``--out``, default ``<run.out_dir>/<run.name>-pipeline``) is marked ``pipeline`` and
holds ``pipeline.json``, ``recipe.toml``, ``compress/<model>/``, ``export/<model>/`` and ``report/``. Without
``--out`` the first of ``...-pipeline``, ``...-pipeline-2``, ... that is new, empty, or a pipeline of the same
recipe is taken, so two recipes never share one. The distillation run lives where ``akd-edge distill`` puts
it (``<run.out_dir>/<run.name>[-N]``), so a run either command made serves both.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from akd_edge.config import Recipe, load_recipe, read_toml, to_dict
from akd_edge.core import files
from akd_edge.core.errors import ConfigError, UsageError
from akd_edge.run.ledger import PipelineState

PIPELINE_KIND = "pipeline"
"""The kind in the mark (:func:`akd_edge.core.files.mark`) of a pipeline folder."""
IGNORED = ("description", "expected")
"""Recipe keys that do not change what a run computes (beside those :func:`recipe_changes` ignores)."""
MAX_CANDIDATES = 1000


def changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Keys that make two recipes different runs (see :func:`akd_edge.train.rundir.recipe_changes`)."""
    from akd_edge.train.rundir import recipe_changes

    return [key for key in recipe_changes(saved, current) if key.split(".")[0] not in IGNORED]


def comparable(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a dict without the keys that do not change what is computed: the hash of a distillation."""
    from akd_edge.train.rundir import RESUME_MAY_CHANGE

    data = {k: v for k, v in to_dict(recipe).items() if k not in IGNORED}
    dropped = {key.split(".")[1] for key in (*RESUME_MAY_CHANGE, "run.name", "run.out_dir")}
    data["run"] = {k: v for k, v in data["run"].items() if k not in dropped}
    return data


def _why_not(path: Path, recipe: dict[str, Any] | None) -> str | None:
    """Why the pipeline may not use ``path``, or None. ``recipe``: required to match an existing pipeline's."""
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_dir():
        return f"{path} is not a folder"
    if not {p.name for p in path.iterdir()} - {files.LOCK}:
        return None
    kind = files.marked_kind(path)
    if kind != PIPELINE_KIND:
        what = f"an akd-edge {kind} folder" if kind else "not empty and not an akd-edge pipeline folder"
        return f"{path} is {what}; choose another --out"
    if recipe is not None:
        saved = _saved_recipe(path)
        if saved is None or changes(saved, recipe):
            return f"{path} is the pipeline of another recipe"
    return None


def _saved_recipe(root: Path) -> dict[str, Any] | None:
    """The recipe a pipeline folder was made for: its recipe.toml (written first), else its pipeline.json's."""
    try:
        return read_toml(root / "recipe.toml")
    except ConfigError:
        return PipelineState.recorded_recipe(root)


def _candidates(recipe: Recipe) -> Iterator[Path]:
    base = Path(recipe.run.out_dir) / f"{recipe.run.name}-pipeline"
    yield base
    for n in range(2, MAX_CANDIDATES):
        yield base.with_name(f"{base.name}-{n}")


def claim_root(recipe: Recipe, out: str | Path | None) -> tuple[Path, files.FolderLock]:
    """The pipeline folder, locked and marked: ``out`` (new, empty or a pipeline), else the recipe's own."""
    current = to_dict(recipe)
    if out is not None:
        chosen = files.refuse_symlink(out)
        if (why := _why_not(chosen, None)) is not None:
            raise UsageError(f"--out {why}")
    else:
        chosen = next((c for c in _candidates(recipe) if _why_not(c, current) is None), None)
        if chosen is None:
            raise UsageError(f"no free pipeline folder under {recipe.run.out_dir}; give --out")
    files.ensure_writable_dir(chosen, "--out")
    lock = files.FolderLock(chosen, "pipeline folder").acquire()
    try:
        if (why := _why_not(chosen, None if out is not None else current)) is not None:
            raise UsageError(f"--out {why}")  # filled between the check and the lock
        if files.marked_kind(chosen) != PIPELINE_KIND:
            files.mark(chosen, PIPELINE_KIND)
        files.remove_orphans(chosen)
        _write_recipe(recipe, chosen / "recipe.toml")
    except BaseException:
        lock.release()
        raise
    return chosen, lock


def _write_recipe(recipe: Recipe, path: Path) -> None:
    """The resolved recipe as TOML, rewritten only when it changed (a run with nothing to do writes nothing)."""
    import tomli_w

    text = tomli_w.dumps(to_dict(recipe))
    if not path.is_file() or path.read_text(encoding="utf-8", errors="replace") != text:
        files.write_text_atomic(path, text)


def clear_ours(path: Path, kind: str) -> None:
    """Remove what a killed stage left at ``path``: only an empty folder or one marked ``kind`` (UsageError else)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise UsageError(f"{path} is not a folder akd-edge made; move it away and run again")
    if files.marked_kind(path) != kind and any(p.name != files.LOCK for p in path.iterdir()):
        raise UsageError(f"{path} is not an akd-edge {kind} folder; akd-edge will not delete it: move it away")
    shutil.rmtree(path)


def publish_stage(work: Path, out: Path, kind: str) -> None:
    """Move a finished stage's folder into place; the stale one it replaces (marked ``kind``) goes only then."""
    out.parent.mkdir(parents=True, exist_ok=True)
    old = out.with_name(f".{out.name}.old")
    clear_ours(old, kind)
    if out.exists() or out.is_symlink():
        if out.is_symlink() or files.marked_kind(out) != kind:
            raise UsageError(f"{out} is not an akd-edge {kind} folder; akd-edge will not replace it: move it away")
        out.rename(old)
    work.rename(out)
    clear_ours(old, kind)
    with contextlib.suppress(OSError):
        work.parent.rmdir()  # the work folder, once nothing else is being built in it


# -- the distillation run ------------------------------------------------------------------------------------


def teacher_file(path: str, which: str) -> Path | None:
    """The file a teacher is read from (None when it cannot be found: distillation then says why)."""
    from akd_edge.core.errors import CheckpointError
    from akd_edge.models.checkpoint import resolve_checkpoint

    if path.startswith("onnx:"):
        onnx = Path(path.removeprefix("onnx:"))
        return onnx if onnx.is_file() else None
    try:
        return resolve_checkpoint(path, which)
    except CheckpointError:
        return None


def teacher_digests(recipe: Recipe) -> list[str | None]:
    """SHA-256 of each teacher's file, in the recipe's order (None where it is not found)."""
    found = [teacher_file(spec.path, spec.which) for spec in recipe.teachers]
    return [files.sha256_file(path) if path is not None else None for path in found]


@dataclass(frozen=True)
class FoundRun:
    """A run directory of the same recipe: ``finished`` (reuse it) or not (resume it from last.pt)."""

    path: Path
    finished: bool


def _same_teachers(summary: dict[str, Any], digests: list[str | None]) -> bool:
    """Whether the run learned from the same teacher files (a run that recorded none is taken as the same)."""
    recorded = summary.get("teachers")
    if not isinstance(recorded, list) or len(recorded) != len(digests):
        return not isinstance(recorded, list)
    for entry, digest in zip(recorded, digests, strict=True):
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if sha and digest and sha != digest:
            return False
    return True


def _existing_runs(recipe: Recipe) -> Iterator[Path]:
    """``<run.out_dir>/<run.name>[-N]`` that exist (gaps of up to 20 missing names are stepped over)."""
    from akd_edge.train.rundir import candidates

    missing = 0
    for path in itertools.islice(candidates(recipe), MAX_CANDIDATES):
        if path.is_dir():
            missing = 0
            yield path
        else:
            missing += 1
            if missing > 20:
                return


def find_run(recipe: Recipe, digests: list[str | None], preferred: Path | None) -> FoundRun | None:
    """A run of the same recipe and teachers: ``preferred`` (the one recorded last time) first, then the usual places.

    A finished run (best.pt, and a summary.json of all the recipe's epochs) is preferred to one that can be
    resumed (a last.pt, no process working in it).
    """
    current = to_dict(recipe)
    resumable = None
    seen = set()
    for path in [*([preferred] if preferred else []), *_existing_runs(recipe)]:
        if str(path) in seen or files.marked_kind(path) != "run":
            continue
        seen.add(str(path))
        try:
            saved = read_toml(path / "recipe.toml")
        except ConfigError:
            continue
        if changes(saved, current):
            continue
        summary_path = path / "summary.json"
        try:
            summary = files.read_json_object(summary_path, "summary") if summary_path.is_file() else None
        except UsageError:
            summary = None
        if summary is not None and (path / "best.pt").is_file() and summary.get("epochs") == recipe.train.epochs:
            if _same_teachers(summary, digests):
                return FoundRun(path, finished=True)
            continue
        if resumable is None and (path / "last.pt").is_file() and not files.in_use(path):
            resumable = FoundRun(path, finished=False)
    return resumable


def resumed_recipe(run_dir: Path, recipe: Recipe) -> Recipe:
    """The run's own recipe with this one's device and threads: a resume refuses any other difference, even in
    the words of ``description`` (which :func:`~akd_edge.run.root.find_run` does not compare)."""
    import json

    keep = [f"run.device={json.dumps(recipe.run.device)}", f"run.threads={recipe.run.threads}"]
    return load_recipe(read_toml(run_dir / "recipe.toml"), keep)
