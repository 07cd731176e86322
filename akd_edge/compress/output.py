"""The output folder of ``akd-edge compress``: a new or empty folder, never one that holds anything, locked for
the run (``--out``, else the first free ``<run.out_dir>/<source>-pruned[-N]``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from akd_edge.core.errors import UsageError
from akd_edge.core.files import LOCK, MARK, FolderInUse, FolderLock, ensure_writable_dir, marked_kind, refuse_symlink

if TYPE_CHECKING:
    from akd_edge.core.distributed import Group


def _refuse_reason(path: Path) -> str | None:
    """Why ``path`` cannot be the output folder, or None when it can.

    A new or empty folder is taken, and so is a folder holding nothing but the mark of a compress run
    that stopped before writing anything. Anything else is refused: compress never replaces files, and
    an earlier output (marked ``compress``, or unmarked from before marks existed) is never merged into.
    """
    if not path.exists():
        return None
    if not path.is_dir():
        return "exists and is not a folder"
    contents = [p.name for p in path.iterdir() if p.name != LOCK]
    kind = marked_kind(path)
    if kind == "compress" and contents == [MARK]:
        return None
    if not contents:
        return None
    if kind == "compress":
        return "holds an earlier compress output"
    if kind is not None:
        return f"is an akd-edge {kind} folder"
    return "already exists and is not an empty folder"


def _lock_if_free(path: Path) -> FolderLock | None:
    """The folder's lock if compress may write there (checked again once locked), else None."""
    if _refuse_reason(path) is not None:
        return None
    try:
        lock = FolderLock(path, "compress folder").acquire()
    except FolderInUse:
        return None
    if _refuse_reason(path) is None:
        return lock
    lock.release()
    return None


def _take(out: str | Path | None, recipe: Any, source_name: str) -> tuple[Path, FolderLock]:
    """The output folder, locked: ``out`` (which must be new or empty), else the first free
    ``<run.out_dir>/<source>-pruned[-N]``, taking each candidate's lock before deciding."""
    from dataclasses import replace

    from akd_edge.train.rundir import candidates

    if out is not None:
        path = refuse_symlink(out)
        reason = _refuse_reason(path)
        if reason is not None:
            raise UsageError(f"--out {path} {reason}; choose another --out")
        ensure_writable_dir(path, "--out")  # fails now, not after the fine-tuning
        lock = _lock_if_free(path)
        if lock is None:
            raise UsageError(f"--out {path} is in use by another akd-edge process or was just filled; choose another")
        return path, lock
    renamed = replace(recipe, run=replace(recipe.run, name=f"{source_name}-pruned"))
    ensure_writable_dir(renamed.run.out_dir, "run.out_dir")
    for path in candidates(renamed):
        lock = _lock_if_free(path)
        if lock is not None:
            return path, lock
    raise AssertionError("unreachable: the candidates never end")


def claim_out(
    out: str | Path | None, recipe: Any, source_name: str, group: Group | None = None
) -> tuple[Path, FolderLock | None]:
    """The output folder and its lock; under torchrun rank 0 claims it and the other ranks get its path (and
    no lock)."""
    if group is None:
        return _take(out, recipe, source_name)
    held: list[FolderLock] = []

    def claim() -> str:
        path, lock = _take(out, recipe, source_name)
        held.append(lock)
        return str(path)

    path = group.from_main(claim)  # a refusal stops every rank with rank 0's message
    return Path(path), (held[0] if held else None)
