"""CIFAR-10 and CIFAR-100: the "python version" pickle batches, read with a restricted unpickler.

The batches are Python 2 pickles of dicts holding a numpy array and lists. Unpickling can run arbitrary
code, so :class:`SafeUnpickler` resolves only the few globals those files use (numpy array and dtype
reconstruction, a latin-1 ``_codecs.encode`` and plain builtin containers) and refuses every other one
with :class:`DataError`; a tampered file cannot reach ``os.system`` or ``eval``.
"""

from __future__ import annotations

import builtins
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.data import locate
from akd_edge.data.base import DATASETS, ImageDataset, LoadedData, read_parts
from akd_edge.data.download import SOURCES, fetch_dataset_files


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as Python 3 pickles of bytes use it, limited to latin-1."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise DataError(f"pickle asked for _codecs.encode(..., {encoding!r}); only latin-1 is allowed")
    return text.encode("latin-1", errors)


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_SAFE_BUILTINS = ("bytearray", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "set", "str", "tuple")


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only numpy arrays and plain containers; any other global is a DataError."""

    def __init__(self, file: io.BufferedIOBase, source: str = "pickle") -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str -> str, as numpy's py2 pickles need
        self.source = source
        self.allowed: dict[tuple[str, str], Callable[..., Any] | type] = _numpy_globals()
        self.allowed[("_codecs", "encode")] = _latin1_encode
        for name in _SAFE_BUILTINS:  # Python 2 pickles name the module __builtin__
            self.allowed[("builtins", name)] = self.allowed[("__builtin__", name)] = getattr(builtins, name)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"{self.source}: refusing to unpickle {module}.{name}; a CIFAR batch only holds numpy arrays "
                "and lists. The file is not a genuine CIFAR batch (tampered or wrong file); re-download it."
            ) from None


def safe_unpickle(path: Path) -> Any:
    """Load a pickle file through :class:`SafeUnpickler`."""
    try:
        with path.open("rb") as fh:
            return SafeUnpickler(fh, source=str(path)).load()
    except DataError:
        raise
    except Exception as err:  # truncated or garbled pickles raise many kinds of errors
        raise DataError(f"cannot read {path}: {type(err).__name__}: {err}; re-download it") from None


def _get(batch: Any, key: str, path: Path) -> Any:
    """``batch[key]`` for dicts with str (latin-1) or bytes keys."""
    if isinstance(batch, dict):
        for k in (key, key.encode()):
            if k in batch:
                return batch[k]
    raise DataError(f"{path} is not a CIFAR batch: no {key!r} entry")


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_batch(path: Path, label_key: str) -> ImageDataset:
    """One CIFAR batch file: ``data`` uint8 [N, 3072] (channel-major 32x32) and its labels."""
    batch = safe_unpickle(path)
    data = np.asarray(_get(batch, "data", path))
    labels = np.asarray(_get(batch, label_key, path), dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
        raise DataError(
            f"{path}: expected uint8 data [N, 3072] with N labels, got {data.dtype} {data.shape}, {len(labels)} labels"
        )
    return ImageDataset(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)), labels)


def _concat(parts: list[ImageDataset]) -> ImageDataset:
    return ImageDataset(np.concatenate([p.images for p in parts]), np.concatenate([p.labels for p in parts]))


def load_cifar(
    name: str,
    *,
    folder_name: str,
    files: dict[str, tuple[str, ...]],
    meta: tuple[str, str],
    label_key: str,
    data_dir: str,
    parts: tuple[str, ...],
    download: bool,
) -> LoadedData:
    """Find (or download and unpack) a CIFAR variant and read the batches of ``parts``."""
    meta_file, names_key = meta
    required = [(f,) for part in parts for f in files[part]] + [(meta_file,)]
    source = SOURCES[name]
    folder = locate.resolve(
        name,
        required,
        data_dir=data_dir,
        download=download,
        subdirs=(folder_name,),
        fetch=lambda target: fetch_dataset_files(name, list(source.files), target),
        how_to_get=locate.how_to_get(
            name, [f"{u}/{f}" for u in source.urls for f in source.files], then=" and unpack it there (tar xzf)"
        ),
    )
    class_names = tuple(_text(n) for n in _get(safe_unpickle(folder / meta_file), names_key, folder / meta_file))
    return read_parts(
        name,
        folder,
        parts,
        lambda part: _concat([read_batch(folder / f, label_key) for f in files[part]]),
        class_names,
    )


@DATASETS.register("cifar10", help="CIFAR-10: 50k/10k colour 32x32 images, 10 classes (python pickle batches)")
def cifar10(data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False) -> LoadedData:
    return load_cifar(
        "cifar10",
        folder_name="cifar-10-batches-py",
        files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
        meta=("batches.meta", "label_names"),
        label_key="labels",
        data_dir=data_dir,
        parts=parts,
        download=download,
    )


@DATASETS.register("cifar100", help="CIFAR-100: 50k/10k colour 32x32 images, 100 fine classes")
def cifar100(data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False) -> LoadedData:
    return load_cifar(
        "cifar100",
        folder_name="cifar-100-python",
        files={"train": ("train",), "test": ("test",)},
        meta=("meta", "fine_label_names"),
        label_key="fine_labels",
        data_dir=data_dir,
        parts=parts,
        download=download,
    )
