"""The export folder on disk: which folder may be replaced, and building the new one beside it.

An export is built in ``.<name>.partial-XXXXXXXX`` next to ``<name>`` and renamed into place at the
end, so a reader sees the earlier export or the new one, never half of one. The rules:

- ``--out`` (or ``export/<run name>``) is replaced only when it is missing, empty, or recognisably an
  earlier export: it carries the :data:`akd_edge.core.files.MARK` of kind ``export``, or (exported before the
  mark existed) a ``report.json`` of the export format. Anything else (a run directory, a folder of the
  user's) is refused with a UsageError: nothing is deleted.
- An export is replaced whole (so a reader never sees half of one), hence only when it holds nothing but
  what akd-edge wrote: the files listed in its mark's manifest (``files``), or for an export written
  before the manifest existed, the names an export writes. A file or folder the user added (notes, an
  app) makes the re-export refuse with a UsageError that names it, before any work: move it out, or
  choose another ``--out``.
- While an export builds, it holds the :class:`akd_edge.core.files.FolderLock` of the output folder, so a
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

from akd_edge.core import files
from akd_edge.core.errors import UsageError, some_names
from akd_edge.export.card import CARD_NAME, REPLAY_NAME, REPORT_FORMAT, REPORT_NAME
from akd_edge.export.web import PAGE_FILES, RUNTIME_DIR, RUNTIME_FILES, WEB_DIR

log = logging.getLogger(__name__)

EXPORT_KIND = "export"
"""The kind in the mark (:func:`akd_edge.core.files.mark`) of an export folder."""
FILES = {
    "fp32": "model.onnx",
    "int8": "model.int8.onnx",
    "ort": "model.ort",
    "int8_ort": "model.int8.ort",
    "report": REPORT_NAME,
    "card": CARD_NAME,
}
"""The files at the top of an export folder, by role: the one place their names are written (the web/ page's
are :mod:`akd_edge.export.web`'s, the replay file verify adds is ``REPLAY_NAME``)."""
ONNX_MODELS = (FILES["fp32"], FILES["int8"])
"""The ONNX models of an export, fp32 first: what verify attacks and the report compares."""
MOBILE_MODELS = (FILES["ort"], FILES["int8_ort"])
"""The onnxruntime-mobile files, converted from :data:`ONNX_MODELS`."""
MODEL_FILES = (*ONNX_MODELS, *MOBILE_MODELS)
KNOWN_FILES = tuple(FILES.values())
"""Every file an export writes at its top (besides the mark and, while it runs, the lock)."""
_OURS = (files.MARK, files.LOCK)
_RANDOM = r"[A-Za-z0-9_]{8}"  # tempfile.mkdtemp's suffix
_LEGACY_OWN = frozenset(
    [*KNOWN_FILES, REPLAY_NAME]
    + [f"{WEB_DIR}/{name}" for name in (*PAGE_FILES, "samples.json")]
    + [f"{WEB_DIR}/{RUNTIME_DIR}/{name}" for name in RUNTIME_FILES]
)
"""What an export written before the manifest existed may hold: every name an export writes."""


def manifest(folder: Path) -> list[str]:
    """Every file under ``folder`` (relative, with ``/``) but the mark and the lock: what the export wrote."""
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            found.append(Path(root, name).relative_to(folder).as_posix())
    return sorted(name for name in found if name not in _OURS)


def list_in_manifest(folder: Path, name: str) -> None:
    """Add ``name``, a file a later command (verify) wrote into the export ``folder``, to its mark's manifest,
    so that a re-export may replace it; a folder without a manifest keeps the names an export writes."""
    mark = files.read_mark(folder)
    listed = (mark or {}).get("files")
    if mark is None or mark.get("kind") != EXPORT_KIND or not isinstance(listed, list) or name in listed:
        return
    files.write_json_atomic(folder / files.MARK, {**mark, "files": sorted([*listed, name])})


def _own_files(folder: Path) -> frozenset[str]:
    """The files akd-edge wrote in the export ``folder``: its mark's manifest, else the names an export writes."""
    listed = (files.read_mark(folder) or {}).get("files")
    if isinstance(listed, list) and all(isinstance(name, str) for name in listed):
        return frozenset(listed)
    return _LEGACY_OWN


def _is_own(relative: str, own: frozenset[str]) -> bool:
    """A file akd-edge wrote, or the temp file a killed akd-edge writer left beside one (``.NAME.xxxx.tmp``)."""
    if relative in own or relative in _OURS:
        return True
    parent, _, name = relative.rpartition("/")
    if not (name.startswith(".") and name.endswith(files.TMP_SUFFIX)):
        return False
    stem = name[1:].rsplit(".", 2)[0]
    return f"{parent}/{stem}".lstrip("/") in own


def foreign(folder: Path) -> list[str]:
    """What ``folder`` holds that akd-edge did not write (a folder of the user's named once, with a ``/``)."""
    own = _own_files(folder)
    found = []
    for root, dirs, names in os.walk(folder):
        relative = Path(root).relative_to(folder).as_posix()
        prefix = "" if relative == "." else f"{relative}/"
        for name in sorted(dirs):
            if not any(path.startswith(f"{prefix}{name}/") for path in own):
                found.append(f"{prefix}{name}/")
        dirs[:] = [name for name in dirs if f"{prefix}{name}/" not in found]
        found += [f"{prefix}{name}" for name in sorted(names) if not _is_own(f"{prefix}{name}", own)]
    return found


def _is_legacy_export(folder: Path) -> bool:
    """An export written before the mark existed: its report.json has the export format."""
    if not (folder / REPORT_NAME).is_file():
        return False
    try:
        report = files.read_json_object(folder / REPORT_NAME, "report")
    except UsageError:
        return False
    return report.get("format") == REPORT_FORMAT


def replaceable(folder: Path) -> str | None:
    """Why ``folder`` may be replaced by a new export ("missing", "empty", "export", "legacy export"), or None.

    An earlier export is replaceable only while it holds nothing but what akd-edge wrote (:func:`foreign`).
    """
    if not folder.exists() and not folder.is_symlink():
        return "missing"
    if folder.is_symlink() or not folder.is_dir():
        return None
    if {path.name for path in folder.iterdir()} <= {files.LOCK}:  # a killed export may leave its stale lock file
        return "empty"
    if foreign(folder):
        return None
    if files.marked_kind(folder) == EXPORT_KIND:
        return "export"
    return "legacy export" if _is_legacy_export(folder) else None


def check_out(out: Path) -> None:
    """Refuse (UsageError, nothing touched) an ``out`` that a new export must not replace."""
    if out.name in ("", ".", ".."):
        raise UsageError(f"--out {out} does not name a folder of its own; give a path such as export/my-model")
    files.refuse_symlink(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; choose another --out")
    if replaceable(out) is not None:
        return
    kind = files.marked_kind(out)
    if kind == EXPORT_KIND or _is_legacy_export(out):
        raise UsageError(
            f"--out {out} is an earlier export that also holds files akd-edge did not write "
            f"({some_names(foreign(out))}); a re-export replaces the folder whole and never deletes them: move them "
            "out of the folder, or choose another --out (nothing was changed)"
        )
    what = f"an akd-edge {kind} folder" if kind else "not an earlier akd-edge export"
    raise UsageError(
        f"--out {out} already exists and is {what} (only an empty folder or an earlier export is replaced); "
        "choose another --out"
    )


def prepare_out(out: Path) -> None:
    """Check ``out`` may be replaced and that its parent is writable: before any work, so a bad --out fails in a second."""
    check_out(out)
    files.ensure_writable_dir(out.parent, "--out")


def _stale_builds(out: Path) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(partial-{_RANDOM}|old-\d+)")
    return [path for path in out.parent.iterdir() if pattern.fullmatch(path.name)]


def remove_stale_builds(out: Path) -> list[Path]:
    """Remove the ``.<name>.partial-*`` / ``.<name>.old-*`` folders killed exports left; call holding ``out``'s lock."""
    removed = []
    for path in _stale_builds(out):
        if path.is_symlink() or not path.is_dir():
            continue
        if ".old-" in path.name and replaceable(path) not in ("export", "legacy export"):
            continue  # an earlier export moved aside is still recognisably one; anything else is not ours
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        log.info("removed %s, left by an interrupted export", path)
    return removed


def _seal(tmp: Path) -> None:
    """Record in the finished folder's mark every file it holds: the files a later re-export may replace."""
    files.mark(tmp, EXPORT_KIND, files=manifest(tmp))


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished folder into place; the earlier export is removed only once the new one is in."""
    _seal(tmp)
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
    _seal(tmp)
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
        remove_stale_builds(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        try:
            os.chmod(tmp, files.dir_mode())  # mkdtemp makes 0700; an export folder gets the usual mode
            files.mark(tmp, EXPORT_KIND)
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a published or kept folder is no longer at tmp
    finally:
        lock.release()
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # the lock created it and the export did not get as far as publishing
