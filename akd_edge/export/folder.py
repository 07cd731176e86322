"""The export folder on disk: which folder may be replaced, and building the new one beside it.

An export is built in ``.<name>.partial-XXXXXXXX`` next to ``<name>`` and renamed into place at the
end, so a reader sees the earlier export or the new one, never half of one. The rules:

- ``--out`` (or ``export/<run name>``) is replaced only when it is missing, empty, or recognisably an
  earlier export: it carries the :data:`akd_edge.files.MARK` of kind ``export``, or (exported before the
  mark existed) a ``report.json`` of the export format beside nothing but the known export files.
  Anything else (a run directory, a folder of the user's) is refused with a UsageError: nothing is deleted.
- While an export builds, it holds the :class:`akd_edge.files.FolderLock` of the output folder, so a
  second export to the same folder fails at once instead of racing it. Under that lock every
  ``.<name>.partial-*`` and ``.<name>.old-*`` folder beside it was left by a killed export, and is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from akd_edge import files
from akd_edge.errors import UsageError

log = logging.getLogger(__name__)

KIND = "export"
REPORT_FORMAT = "akd-edge-export/1"
MODEL_FILES = ("model.onnx", "model.int8.onnx", "model.ort", "model.int8.ort")
KNOWN_FILES = (*MODEL_FILES, "report.json", "MODEL_CARD.md")
"""Every file an export writes (besides the mark and, while it runs, the lock)."""
_OURS = (files.MARK, files.LOCK)
_RANDOM = r"[A-Za-z0-9_]{8}"  # tempfile.mkdtemp's suffix


def _is_legacy_export(folder: Path) -> bool:
    """An export written before the mark existed: its report.json has the export format, and nothing else is there."""
    names = {path.name for path in folder.iterdir()}
    if "report.json" not in names or not names <= {*KNOWN_FILES, *_OURS}:
        return False
    try:
        report = files.read_json_object(folder / "report.json", "report")
    except UsageError:
        return False
    return report.get("format") == REPORT_FORMAT


def replaceable(folder: Path) -> str | None:
    """Why ``folder`` may be replaced by a new export ("missing", "empty", "export", "legacy export"), or None."""
    if not folder.exists() and not folder.is_symlink():
        return "missing"
    if folder.is_symlink() or not folder.is_dir():
        return None
    if {path.name for path in folder.iterdir()} <= {files.LOCK}:  # a killed export may leave its stale lock file
        return "empty"
    if files.marked_kind(folder) == KIND:
        return "export"
    return "legacy export" if _is_legacy_export(folder) else None


def check_out(out: Path) -> None:
    """Refuse (UsageError, nothing touched) an ``out`` that a new export must not replace."""
    if out.name in ("", ".", ".."):
        raise UsageError(f"--out {out} does not name a folder of its own; give a path such as export/my-model")
    if out.is_symlink():
        raise UsageError(f"--out {out} is a symbolic link; give the folder itself, or choose another --out")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; choose another --out")
    if replaceable(out) is None:
        kind = files.marked_kind(out)
        what = f"an akd-edge {kind} folder" if kind else "not an earlier akd-edge export"
        raise UsageError(
            f"--out {out} already exists and is {what} (only an empty folder or an earlier export is replaced); "
            "choose another --out"
        )


def prepare_out(out: Path) -> None:
    """Check ``out`` may be replaced and that its parent is writable: before any work, so a bad --out fails in a second."""
    check_out(out)
    files.ensure_writable_dir(out.parent, "--out")


def _orphans(out: Path) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(partial-{_RANDOM}|old-\d+)")
    return [path for path in out.parent.iterdir() if pattern.fullmatch(path.name)]


def remove_orphans(out: Path) -> list[Path]:
    """Remove the ``.<name>.partial-*`` / ``.<name>.old-*`` folders killed exports left; call holding ``out``'s lock."""
    removed = []
    for path in _orphans(out):
        if path.is_symlink() or not path.is_dir():
            continue
        if ".old-" in path.name and replaceable(path) not in ("export", "legacy export"):
            continue  # an earlier export moved aside is still recognisably one; anything else is not ours
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("removed %s, left by an interrupted export", path)
    return removed


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; the earlier export is removed only once the new one is in."""
    how = replaceable(out)  # checked again under the lock: the folder may have changed since prepare_out
    if how is None:
        raise UsageError(f"--out {out} changed while exporting and is no longer an earlier export; nothing replaced")
    if how == "missing":
        os.replace(tmp, out)
        return
    if how in ("export", "legacy export"):
        log.info("replacing the earlier export in %s", out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def keep_failed(tmp: Path, out: Path) -> Path:
    """Move a failed attempt to ``<name>.failed`` (replacing an earlier failed export only) for inspection."""
    kept = out.with_name(f"{out.name}.failed")
    if replaceable(kept) is None:
        kept = Path(tempfile.mkdtemp(dir=out.parent, prefix=f"{out.name}.failed-"))
    if kept.exists():
        old = kept.with_name(f".{kept.name}.old-{os.getpid()}")
        os.replace(kept, old)
        os.replace(tmp, kept)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, kept)
    return kept


@contextlib.contextmanager
def building(out: Path) -> Iterator[Path]:
    """A marked partial folder beside ``out`` to build the export in, under ``out``'s lock.

    On success the caller publishes it with :func:`publish`; on any exception it is removed.
    """
    created = not out.exists()
    lock = files.FolderLock(out, "export folder").acquire()
    try:
        remove_orphans(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            os.chmod(tmp, files.dir_mode())  # mkdtemp makes 0700; an export folder gets the usual mode
            files.mark(tmp, KIND)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a published or kept folder is no longer at tmp
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # the lock created it and the export did not get as far as publishing
