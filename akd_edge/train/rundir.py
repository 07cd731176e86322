"""Run directories: one process per folder, marked as an akd-edge run, never taken from someone else.

A new run claims a missing or empty folder (:func:`claim_run_dir`), a resume opens a marked run that has a
``last.pt`` (:func:`open_run_dir`); both hold the folder's lock (:class:`akd_edge.core.files.FolderLock`) for
the life of the run and clean up the temp files of killed writers (:func:`hold_run_dir` takes the one a run is
about to train in, rank 0's under torchrun). A resumed run keeps its recipe (:func:`recipe_changes`), except the
keys in :data:`RESUME_MAY_CHANGE` (:func:`refuse_resume_changes`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from akd_edge.config import Recipe, load_recipe, parse_override, read_toml, to_dict
from akd_edge.core.errors import CheckpointError, ConfigError, UsageError, some_names
from akd_edge.core.files import (
    LOCK,
    MARK,
    TMP_SUFFIX,
    FolderInUse,
    FolderLock,
    ensure_writable_dir,
    in_use,
    mark,
    marked_kind,
    refuse_symlink,
    remove_orphans,
    write_text_atomic,
)
from akd_edge.core.registry import check_code_allowed
from akd_edge.models.checkpoint import load_checkpoint

if TYPE_CHECKING:
    from akd_edge.core.distributed import Group

RESUME_MAY_CHANGE = ("run.threads", "run.device")
"""Recipe keys that may differ when a run is resumed; any other change would make it a different run."""
UNSAVED_OUTPUTS = ("metrics.jsonl", "best.pt", "dynamics.npz", "epochs/epoch-001.pt")
"""What a run may write before its first ``last.pt``: a run stopped then (a full disk, a kill at the end of
epoch 1) has no resume point, and starting it again loses nothing, since it writes these files anew."""
_WHERE_KEYS = ("run.name", "run.out_dir")  # where a new run's folder goes: moot once the folder is given
_INFORMATIVE = ("description", "expected.")  # words about the recipe and its published results: train nothing


class RunDir:
    """A run directory this process holds: locked for the life of the run, marked as an akd-edge run.

    Made by :func:`claim_run_dir` (a new run) or :func:`open_run_dir` (a resume); release it when the run
    ends (``with claim_run_dir(recipe) as run: train_run(recipe, run)``).
    """

    def __init__(self, path: Path, lock: FolderLock) -> None:
        self.path = path
        self.lock = lock

    def release(self) -> None:
        self.lock.release()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __fspath__(self) -> str:
        return str(self.path)


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _files(folder: Path) -> set[str]:
    """The names in ``folder`` other than temp files of killed writers and the lock; epochs/ by file."""
    names = {p.name for p in folder.iterdir() if not _is_temp(p.name)} - {LOCK}
    epochs = folder / "epochs"
    if "epochs" in names and epochs.is_dir() and not epochs.is_symlink():
        names = (names - {"epochs"}) | {f"epochs/{p.name}" for p in epochs.iterdir() if not _is_temp(p.name)}
    return names


def _never_saved(path: Path) -> bool:
    """Whether a marked run holds only what a run writes before its first last.pt: its mark, recipe.toml and
    :data:`UNSAVED_OUTPUTS`."""
    return _files(path) <= {MARK, "recipe.toml", *UNSAVED_OUTPUTS}


def _why_not_fresh(path: Path) -> str | None:
    """Why a new run may not start in ``path``, or None: it is missing, empty, or a run that never saved.

    A run that stopped before its first resumable checkpoint (last.pt) leaves its mark, recipe.toml and at
    most :data:`UNSAVED_OUTPUTS` (and maybe temp files); starting again there loses nothing. Anything else
    belongs to someone: a run to resume, a finished run, another akd-edge folder or the user's own files.
    """
    if not path.exists():
        return None
    if not path.is_dir():
        return f"{path} exists and is not a folder"
    names = {p.name for p in path.iterdir()} - {LOCK}
    if not names:
        return None
    kind = marked_kind(path)
    if (path / "last.pt").exists():
        return f"{path} already holds a run; continue it with --resume {path}, or choose another --out"
    if kind == "run":
        if _never_saved(path):
            return None
        return f"{path} holds a finished akd-edge run (no last.pt to resume; it has {some_names(sorted(names))}); choose another --out"
    if kind is not None:
        return f"{path} is an akd-edge {kind} folder, not a run; choose another --out"
    return (
        f"{path} is not empty and is not an akd-edge run (it holds {some_names(sorted(names))}); "
        "choose a new or empty folder for --out"
    )


def candidates(recipe: Recipe) -> Iterator[Path]:
    """``<run.out_dir>/<run.name>``, then the same suffixed -2, -3, ..."""
    base = Path(recipe.run.out_dir) / recipe.run.name
    yield base
    for n in itertools.count(2):
        yield base.with_name(f"{base.name}-{n}")


def new_run_dir(recipe: Recipe, out: str | Path | None = None) -> Path:
    """``out`` as given, else the first ``<run.out_dir>/<run.name>[-N]`` that is free: unused and not in use.

    Only a suggestion: another process may take it next. A run claims its folder with :func:`claim_run_dir`.
    """
    if out is not None:
        return Path(out)
    return next(c for c in candidates(recipe) if _why_not_fresh(c) is None and not in_use(c))


def _take(path: Path, lock: FolderLock, *, new: bool = False) -> RunDir:
    """Clean up after killed writers (we hold the lock, so no temp file is live) and mark the folder a run.

    A ``new`` run also removes what an earlier start that never saved left (it would write them anew; the
    metrics of two starts must not mix)."""
    for folder in (path, path / "epochs"):
        remove_orphans(folder)
    for name in UNSAVED_OUTPUTS if new else ():
        (path / name).unlink(missing_ok=True)
    for legacy in ("recipe.tmp", ".dynamics.tmp.npz"):  # temp names of versions before files.write_atomic
        (path / legacy).unlink(missing_ok=True)
    if marked_kind(path) != "run":
        mark(path, "run")
    return RunDir(path, lock)


def claim_run_dir(recipe: Recipe, out: str | Path | None = None) -> RunDir:
    """Lock and mark the folder of a new run: ``out``, or the first free ``<run.out_dir>/<run.name>[-N]``.

    ``out`` must be missing or empty (a UsageError says what it holds otherwise); the default search skips
    folders that are used or in use, taking each candidate's lock before deciding, so two runs started at
    once never share a folder. Fails in a second on an unwritable folder, before any data is loaded.
    """
    if out is not None:
        return claim_folder(out)
    ensure_writable_dir(recipe.run.out_dir, "run.out_dir")
    for path in candidates(recipe):
        if _why_not_fresh(path) is not None:
            continue
        try:
            lock = FolderLock(path, "run directory").acquire()
        except FolderInUse:
            continue
        if _why_not_fresh(path) is None:
            return _take(path, lock, new=True)
        lock.release()
    raise AssertionError("unreachable: the candidates never end")


def claim_folder(out: str | Path) -> RunDir:
    """Lock and mark ``out`` for a new run: it must be missing or empty (a UsageError says what it holds)."""
    path = refuse_symlink(out)
    if (why := _why_not_fresh(path)) is not None:
        raise UsageError(why)
    ensure_writable_dir(path, "--out")
    lock = FolderLock(path, "run directory").acquire()
    if (why := _why_not_fresh(path)) is not None:  # filled between the check and the lock
        lock.release()
        raise UsageError(why)
    return _take(path, lock, new=True)


def open_run_dir(path: str | Path) -> RunDir:
    """Lock a run directory to resume it: an akd-edge run with a last.pt, or a refusal that says why.

    Runs made before folders were marked are accepted when their recipe.toml and last.pt read as akd-edge
    files (and are marked now).
    """
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"cannot resume {path}: no such run directory")
    ensure_writable_dir(path, "--resume")
    lock = FolderLock(path, "run directory").acquire()
    try:
        kind = marked_kind(path)
        if kind not in (None, "run"):
            raise CheckpointError(f"cannot resume {path}: it is an akd-edge {kind} folder, not a training run")
        if not (path / "last.pt").is_file():
            hint = f"; start it again with --out {path}" if _why_not_fresh(path) is None else ""
            raise CheckpointError(f"cannot resume {path}: it has no last.pt to continue from{hint}")
        if kind is None:  # a run from before the mark: check that it is one
            read_toml(path / "recipe.toml")
            load_checkpoint(path / "last.pt")
        return _take(path, lock)
    except BaseException:
        lock.release()
        raise


def hold_run_dir(
    recipe: Recipe, out: str | Path | None = None, *, resume: bool = False, group: Group | None = None
) -> tuple[RunDir | None, Path]:
    """The run directory of a run about to start, held (and checked writable) before any data loads.

    A resume opens ``out`` (:func:`open_run_dir`); a new run claims ``out`` or the first free
    ``<run.out_dir>/<run.name>[-N]`` (:func:`claim_run_dir`). In a data-parallel run (``group``) rank 0 holds it
    and the other ranks get its path and None; a refusal stops every rank with rank 0's message.
    """
    if resume and out is None:
        raise UsageError("a resume continues a run directory: give the one to continue")
    held: list[RunDir] = []

    def hold() -> str:
        held.append(open_run_dir(out) if resume else claim_run_dir(recipe, out))
        return str(held[0].path)

    path = hold() if group is None else group.from_main(hold)
    return (held[0] if held else None), Path(path)


def refuse_resume_changes(path: str | Path, overrides: Sequence[str] = (), given: Sequence[str] = ()) -> None:
    """A ConfigError naming what a resume of ``path`` may not change: the ``overrides`` of keys outside
    :data:`RESUME_MAY_CHANGE`, and ``given`` (the command's flags that would change the run, such as ``--out``)."""
    keys = (".".join(parse_override(text)[0]) for text in overrides)
    refused = [*given, *(key for key in keys if key not in RESUME_MAY_CHANGE)]
    if refused:
        raise ConfigError(
            f"--resume {path} continues the run as its recipe.toml says; refused: {', '.join(refused)}. "
            f"Only {', '.join(RESUME_MAY_CHANGE)} (and --device) may change when resuming; to train differently "
            f"start a new run, e.g. --recipe {Path(path) / 'recipe.toml'} --set ... --out NEW_DIR"
        )


def run_recipe(path: str | Path, overrides: Sequence[str] = (), *, allow_code: bool = False) -> Recipe:
    """The recipe a run directory was started with (its recipe.toml), with ``overrides`` applied.

    A run folder may come from anyone: a ``module:factory`` its recipe names (the model, a teacher's factory)
    is imported only with ``allow_code`` (``--allow-code``), as a checkpoint's is only with ``--model-factory``.
    """
    saved = Path(path) / "recipe.toml"
    if not saved.is_file():
        raise ConfigError(f"--resume {path}: no recipe.toml there; is it a run directory?")
    recipe = load_recipe(read_toml(saved), list(overrides))
    check_code_allowed(recipe.code_names, str(saved), allowed=allow_code)
    return recipe


def write_recipe(recipe: Recipe, path: Path) -> None:
    """The fully resolved recipe as TOML, written atomically."""
    import tomli_w

    write_text_atomic(path, tomli_w.dumps(to_dict(recipe)))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flat(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            flat[f"{prefix}{key}"] = len(value)  # tables such as [[teachers]]: compared entry by entry
            for index, item in enumerate(value):
                flat |= _flat(item, f"{prefix}{key}.{index}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def recipe_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The dotted keys whose values differ between two recipe dicts, except :data:`RESUME_MAY_CHANGE`.

    Keys only one side has (a field added in a later version) are not a change, nor is where the run's
    folder was made (a run folder may be moved or copied), nor the recipe's description and ``[expected]``
    section (a shipped recipe's words may be edited under a finished or interrupted run).
    """
    old, new = _flat(saved), _flat(current)
    same = (*RESUME_MAY_CHANGE, *_WHERE_KEYS)
    return sorted(
        k for k in old.keys() & new.keys() if old[k] != new[k] and k not in same and not k.startswith(_INFORMATIVE)
    )
