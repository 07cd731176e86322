"""Files akd-edge writes: atomic writes, names taken from files, run-directory locks, ownership marks.

Everything here is torch-free and cheap to import. The rules it enforces:

- a file is written through a temp file in the same folder and a rename, so a reader never sees half of it,
  and it gets the usual mode (0644 under the default umask), not ``mkstemp``'s 0600;
- a name that comes from a file (a checkpoint's ``run.name``, a report's model names) is a plain name: no
  path separators, no ``..``, no leading dot, no control characters, at most :data:`MAX_NAME` characters;
- a folder akd-edge creates carries a mark (:data:`MARK`) saying what it is, and only a folder with the
  right mark is ever replaced or cleaned;
- one process at a time works in a run directory (:class:`FolderLock`, an ``flock``ed lock file that the
  kernel releases when the process dies, so a stale lock never blocks anyone).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from akd_edge.core.errors import UsageError

MAX_NAME = 100
"""Longest name accepted for a run, an export or a model file stem (file systems allow 255 bytes)."""
MARK = ".akd-edge.json"
"""The mark file in every folder akd-edge creates: ``{"kind": "run" | "export" | ..., "created": ...}``."""
LOCK = ".akd-edge.lock"
"""The lock file of a folder in use (holds the pid of the process that uses it)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*")
TMP_SUFFIX = ".tmp"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
"""The errnos of a full disk or an exhausted quota: the CLI turns them into one line (``cli.common.user_errors``)."""


class FolderInUse(UsageError):
    """Another live process holds the folder's lock."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a plainly created file gets (0644 under the usual umask 022)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a plainly created folder gets (0755 under the usual umask 022)."""
    return 0o777 & ~_umask()


def check_name(name: Any, what: str) -> str:
    """``name`` if it is a safe plain name, else a UsageError that says what was wrong.

    Names from files are untrusted: ``../x``, ``/etc``, ``.hidden`` or a 10,000-character name must never
    become a path that leaves the folder it is joined to.
    """
    if not isinstance(name, str) or not name:
        raise UsageError(f"{what}: expected a non-empty name, got {name!r}")
    if len(name) > MAX_NAME:
        raise UsageError(f"{what}: {len(name)} characters is too long (at most {MAX_NAME}): {name[:40]!r}...")
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"{what}: {name!r} is not a plain name; use letters, digits and . _ + = - "
            "(starting with a letter or digit, no '/' or '..')"
        )
    return name


def _tmp_path(path: Path) -> tuple[int, Path]:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    os.fchmod(fd, file_mode())  # mkstemp makes 0600; an output file gets the usual mode
    return fd, Path(tmp)


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` by calling ``write(fh)`` on a temp file in the same folder, fsync, then rename.

    Readers see the old file or the new one, never half of one; a failure removes the temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _tmp_path(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in DISK_FULL and not err.filename:  # a write() error names no file: name the one we write
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda fh: fh.write(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_ready(value: Any) -> Any:
    """NaN and inf become None (JSON has no NaN); tuples and paths become lists and strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return json_ready(value.item())
    return value


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """``obj`` as indented JSON (NaN written as null), atomically."""
    return write_text_atomic(path, json.dumps(json_ready(obj), indent=2, allow_nan=False) + "\n")


def copy_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy a file so that ``dst`` is never half-written."""

    def copy(fh: IO[bytes]) -> None:
        with open(src, "rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                fh.write(block)

    return write_atomic(dst, copy)


def file_digest(path: str | Path, algo: str = "sha256") -> str:
    """Hex digest of a file (``sha256``, or ``md5`` for datasets that publish only that), read in 1 MiB blocks."""
    digest = hashlib.new(algo, usedforsecurity=False) if algo == "md5" else hashlib.new(algo)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file: what reports and provenance record."""
    return file_digest(path, "sha256")


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file that must hold an object; a clear UsageError when it is missing, not JSON or not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{what}: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{what}: cannot read {path} as JSON: {err}") from None
    except RecursionError:
        raise UsageError(f"{what}: {path} is nested too deeply to be an akd-edge file") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what}: {path} holds a JSON {type(value).__name__}, expected an object")
    return value


def check_own_json(path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The JSON object akd-edge wrote at ``path`` ({} when there is none yet), before it is overwritten.

    akd-edge recognises its own JSON files by their ``format`` field (``fmt``); a file without it, a symbolic
    link, or one that is not JSON belongs to someone else and is never overwritten (UsageError).
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return {}
    refuse = f"{what}: {path} exists and was not written by akd-edge ({{}}); move it away or choose another --out"
    if path.is_symlink() or not path.is_file():
        raise UsageError(refuse.format("not a plain file"))
    try:
        value = read_json_object(path, what)
    except UsageError:
        raise UsageError(refuse.format("not an akd-edge JSON object")) from None
    if value.get("format") != fmt:
        raise UsageError(refuse.format(f"format {value.get('format')!r}, expected {fmt!r}"))
    return value


def check_own_outputs(out: Path, name: str, fmt: str, companions: tuple[str, ...] = ()) -> None:
    """Refuse (UsageError) to overwrite in ``out`` a file akd-edge did not write: ``name`` must be missing or an
    akd-edge JSON of format ``fmt``, and each of ``companions`` missing or listed by it (under ``plots`` or as
    ``samples``)."""
    previous = check_own_json(out / name, fmt, "--out")
    plots = previous.get("plots")
    listed = {previous.get("samples"), *(plots.values() if isinstance(plots, dict) else ())}
    for companion in companions:
        path = out / companion
        if (path.exists() or path.is_symlink()) and companion not in listed:
            raise UsageError(
                f"--out: {path} exists and was not written by akd-edge (no akd-edge {name} beside it lists it); "
                "move it away or choose another --out"
            )


# -- folders akd-edge owns -----------------------------------------------------------------------


def mark(folder: str | Path, kind: str, **info: Any) -> None:
    """Record that akd-edge created ``folder`` as a ``kind`` (run, export, compress, eval...)."""
    write_json_atomic(Path(folder) / MARK, {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **info})


def read_mark(folder: str | Path) -> dict[str, Any] | None:
    """What :func:`mark` recorded, or None for a folder akd-edge did not create (or a corrupt mark)."""
    try:
        value = json.loads((Path(folder) / MARK).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def marked_kind(folder: str | Path) -> str | None:
    """The kind recorded by :func:`mark`, or None for a folder akd-edge did not create (or a corrupt mark)."""
    kind = (read_mark(folder) or {}).get("kind")
    return kind if isinstance(kind, str) else None


def is_empty_dir(folder: str | Path) -> bool:
    folder = Path(folder)
    return folder.is_dir() and not any(folder.iterdir())


def refuse_symlink(folder: str | Path, what: str = "--out") -> Path:
    """``folder`` unless it is a symbolic link (UsageError): the one rule for every command's output folder.

    A folder akd-edge writes, replaces or cleans is named directly, never through a link, so that nothing is
    written, replaced or removed in a place the user did not name (its parent folders may be links).
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise UsageError(f"{what} {folder} is a symbolic link; give the folder itself, or choose another {what}")
    return folder


def ensure_writable_dir(folder: str | Path, what: str) -> Path:
    """Create ``folder`` (and parents) and check a file can be created in it, or raise a UsageError.

    Called before long work, so an unwritable output folder fails in a second, not after an hour.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what}: {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".akd-edge-write-test.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise UsageError(f"{what}: cannot write to {folder} ({reason}); choose a folder you can write to") from None
    return folder


def remove_orphans(folder: str | Path, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete temp files that a killed akd-edge process left in ``folder``: ``.NAME.<random>.tmp``.

    Only files matching the pattern of :func:`write_atomic` are touched (and only for ``names`` when
    given); call it while holding the folder's lock, so no live writer's temp file is removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(f".*{TMP_SUFFIX}"):
        stem = path.name[1:].rsplit(".", 2)[0]
        if path.is_file() and not path.is_symlink() and (names is None or stem in names):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def in_use(folder: str | Path) -> bool:
    """Whether a live process holds ``folder``'s :class:`FolderLock` (probed without creating anything)."""
    import fcntl

    try:
        fd = os.open(Path(folder) / LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


class FolderLock:
    """An exclusive lock on a folder for the life of one process: ``with FolderLock(run_dir, "run"):``.

    The lock file is ``flock``ed, so the kernel drops the lock when its holder dies (kill -9 included):
    a lock file left behind by a dead process is stale and taken over silently. A second live process
    gets :class:`FolderInUse` naming the holder's pid.
    """

    def __init__(self, folder: str | Path, what: str = "folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                holder = path.read_text(errors="replace").strip() or "another process"
                raise FolderInUse(
                    f"{self.what} {self.folder} is in use by {holder}; wait for it to finish or stop it "
                    "(one process per folder)"
                ) from None
            try:  # the holder may have released and unlinked the file between our open and flock
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        with contextlib.suppress(OSError):
            (self.folder / LOCK).unlink()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked(folder: str | Path, what: str = "folder") -> Iterator[FolderLock]:
    with FolderLock(folder, what) as lock:
        yield lock


@contextlib.contextmanager
def output_folder(
    out_dir: str | Path | None, default: Path, name: str, fmt: str, companions: tuple[str, ...] = ()
) -> Iterator[Path]:
    """The folder an evaluation writes ``name`` (and ``companions``) into, held for the whole evaluation.

    ``out_dir`` (``--out``; never a symbolic link) or ``default``; checked writable and free of files of the
    same names that akd-edge did not write, and locked (:class:`FolderLock`), so a run still
    training there, or a second evaluation, is refused before any attack runs.
    """
    out = refuse_symlink(out_dir) if out_dir is not None else default
    ensure_writable_dir(out, "--out")
    check_own_outputs(out, name, fmt, companions)
    try:
        lock = FolderLock(out, "folder").acquire()
    except FolderInUse as err:
        raise FolderInUse(f"{err}; or write elsewhere with --out") from None
    try:
        yield out
    finally:
        lock.release()
