"""Where dataset files are looked for, in order, and the error that lists every place when they are missing.

An explicit ``data_dir`` (``data.data_dir``, ``--data-dir``) is the only place searched: ``data_dir`` and
``data_dir/NAME``; when it is missing, a file, empty or lacks the files, that is an error naming it (a run
must never record a folder it did not read). Without one, the search order for dataset ``NAME`` is
``$AKD_EDGE_DATA`` and ``$AKD_EDGE_DATA/NAME`` (when set), the OS location (``/usr/share/datasets/fashion-mnist``
from the Debian package ``dataset-fashion-mnist``), then the download cache ``~/.cache/akd-edge/data/NAME``.
In each folder a loader may also look one level down (the folder a CIFAR archive unpacks to).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from akd_edge.core.errors import DataError

log = logging.getLogger(__name__)

ENV_DATA = "AKD_EDGE_DATA"
"""Environment variable naming a folder that holds datasets (each in a subfolder named after it, or directly)."""

OS_LOCATIONS: dict[str, tuple[str, ...]] = {
    "fashion-mnist": ("/usr/share/datasets/fashion-mnist",),
}
"""Folders where an OS package installs a dataset."""

OS_PACKAGES: dict[str, tuple[str, str]] = {
    "fashion-mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist"),
}
"""Debian/Ubuntu packages that install a dataset, and where they put it."""

Required = Sequence[Sequence[str]]
"""Files (or folders) a dataset needs: each entry lists acceptable names, e.g. ``("x.gz", "x")``."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/akd-edge/data``, by default ``~/.cache/akd-edge/data``: where downloads go by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "akd-edge" / "data"


def candidate_dirs(name: str, data_dir: str = "") -> list[Path]:
    """Every folder searched for dataset ``name``, in order, without duplicates (only ``data_dir`` when given)."""
    if data_dir:
        root = Path(data_dir).expanduser()
        return [root, root / name]
    dirs: list[Path] = []
    env = os.environ.get(ENV_DATA, "")
    if env:
        root = Path(env).expanduser()
        dirs += [root, root / name]
    dirs += [Path(p) for p in OS_LOCATIONS.get(name, ())]
    dirs.append(cache_root() / name)
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def download_dir(name: str, data_dir: str = "") -> Path:
    """Where ``--download`` writes: ``data_dir`` itself, else ``$AKD_EDGE_DATA/NAME``, else the cache."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get(ENV_DATA, "")
    return (Path(env).expanduser() if env else cache_root()) / name


def pick(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` that exists in ``folder``."""
    for n in names:
        if (folder / n).exists():
            return folder / n
    return None


def missing_in(folder: Path, required: Required) -> list[str]:
    """Entries of ``required`` with none of their names present in ``folder``."""
    return [names[0] for names in required if pick(folder, names) is None]


def _expand(folders: Sequence[Path], subdirs: Sequence[str]) -> list[Path]:
    return [d for folder in folders for d in (folder, *(folder / s for s in subdirs))]


def find_folder(name: str, required: Required, data_dir: str = "", subdirs: Sequence[str] = ()) -> Path | None:
    """The first searched folder holding every required file, or None."""
    for folder in _expand(candidate_dirs(name, data_dir), subdirs):
        if folder.is_dir() and not missing_in(folder, required):
            return folder
    return None


def missing_error(name: str, required: Required, data_dir: str, subdirs: Sequence[str], how_to_get: str) -> DataError:
    """A DataError naming the files, every folder searched (and what each lacks), and how to get the files."""
    wanted = ", ".join(" or ".join(names) for names in required)
    lines = [f"{name}: dataset files not found; need {wanted}. Looked in:"]
    for folder in _expand(candidate_dirs(name, data_dir), subdirs):
        if not folder.is_dir():
            lines.append(f"  - {folder} (no such folder)")
        else:
            lines.append(f"  - {folder} (missing {', '.join(missing_in(folder, required))})")
    if data_dir:
        lines.append(
            "  (data.data_dir / --data-dir was given, so only it is searched; leave it empty to search "
            f"${ENV_DATA}, the OS location and the download cache)"
        )
    else:
        lines.append("  (data.data_dir / --data-dir not given)")
        if not os.environ.get(ENV_DATA):
            lines.append(f"  (${ENV_DATA} not set)")
    lines.append(how_to_get)
    return DataError("\n".join(lines))


def resolve(
    name: str,
    required: Required,
    *,
    data_dir: str = "",
    download: bool = False,
    subdirs: Sequence[str] = (),
    fetch: Callable[[Path], None] | None = None,
    how_to_get: str = "",
) -> Path:
    """The folder holding ``required``; with ``download``, ``fetch(target)`` first fills the download folder."""
    if data_dir:
        check_data_dir(name, data_dir, required, download=download and fetch is not None, how_to_get=how_to_get)
    folder = find_folder(name, required, data_dir, subdirs)
    if folder is not None:
        return folder
    if download and fetch is not None:
        target = download_dir(name, data_dir)
        target.mkdir(parents=True, exist_ok=True)
        fetch(target)
        for folder in _expand([target], subdirs):
            if folder.is_dir() and not missing_in(folder, required):
                return folder
        raise DataError(f"{name}: downloaded into {target} but still missing {', '.join(missing_in(target, required))}")
    raise missing_error(name, required, data_dir, subdirs, how_to_get)


def check_data_dir(
    name: str, data_dir: str, required: Required, *, download: bool = False, how_to_get: str = ""
) -> None:
    """A DataError unless the explicit ``data_dir`` is a non-empty folder (or, with ``download``, absent or empty)."""
    root = Path(data_dir).expanduser()
    wanted = ", ".join(" or ".join(names) for names in required)
    expected = f"expected a folder holding the {name} files ({wanted}), or their folder {root / name}"
    if how_to_get:
        expected += f". {how_to_get}"
    if root.exists() and not root.is_dir():
        raise DataError(f"{name}: data_dir {root} is a file, not a folder; {expected}")
    if download:
        return  # an absent or empty folder is where the download goes
    if not root.exists():
        raise DataError(
            f"{name}: data_dir {root} does not exist; {expected} (Or fix data.data_dir / --data-dir, or leave it "
            f"empty to search ${ENV_DATA}, the OS location and the download cache.)"
        )
    try:
        empty = not any(root.iterdir())
    except OSError as err:
        raise DataError(f"{name}: cannot read data_dir {root} ({err.strerror}); {expected}") from None
    if empty:
        raise DataError(f"{name}: data_dir {root} is empty; {expected}")


def how_to_get(name: str, urls: Sequence[str], *, downloadable: bool = True, then: str = "") -> str:
    """The 'how to get the files' hint of the missing-files error."""
    ways = []
    if name in OS_PACKAGES:
        package, where = OS_PACKAGES[name]
        ways.append(f"`sudo apt-get install {package}` (installs into {where})")
    if downloadable:
        ways.append("re-run with --set data.download=true (in a recipe: data.download = true)")
        ways.append(f"fetch them from {' or '.join(urls)} into one of the folders above{then}")
    return "To get them: " + "; or ".join(ways) + "."
