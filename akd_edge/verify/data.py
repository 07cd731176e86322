"""The labelled test images verify attacks: a dataset's test split, or an ``.npz`` file, checked before use."""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from akd_edge.core.errors import DataError

NPZ_HELP = "expected an .npz with arrays 'images' [N, C, H, W] (uint8, or float in [0, 1]) and 'labels' [N]"


@dataclass
class TestData:
    """The labelled images verification runs on, and where they came from."""

    images: np.ndarray
    labels: np.ndarray
    name: str
    source: str

    def digest(self) -> str:
        """SHA-256 of the images and labels (shapes and types included): two sets attacked alike give the
        same examples only when this is equal."""
        sha = hashlib.sha256()
        for array in (self.images, self.labels):
            sha.update(f"{array.dtype.str}{array.shape}".encode())
            sha.update(np.ascontiguousarray(array).tobytes())
        return sha.hexdigest()


def _check_images(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Shapes, dtypes and values of labelled images from a file: NaN or out-of-range pixels would fake robustness."""
    if images.ndim != 4 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{path}: expected images [N, C, H, W] and labels [N], got {images.shape} and {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    if images.dtype == np.uint8:
        return
    if not np.issubdtype(images.dtype, np.floating):
        raise DataError(f"{path}: images must be uint8 (0-255) or float in [0, 1], got {images.dtype}")
    bad = int((~np.isfinite(images)).reshape(len(images), -1).any(1).sum())
    if bad:
        raise DataError(f"{path}: {bad} image(s) hold NaN or infinite values; images must be finite, in [0, 1]")
    if len(images) and (images.min() < 0 or images.max() > 1):
        raise DataError(f"{path}: float images must be in [0, 1], got [{images.min():.3g}, {images.max():.3g}]")


def load_npz(path: Path, n: int = 0) -> TestData:
    """Images ``[N, C, H, W]`` (uint8, or float in [0, 1]) and ``labels`` from an ``.npz`` file, checked."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; {NPZ_HELP}")
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz archive (numpy.savez writes a zip of .npy arrays); {NPZ_HELP}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = archive["images"], archive["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise DataError(f"cannot read {path} ({err}); {NPZ_HELP}") from None
    if n:
        images, labels = images[:n], labels[:n]
    _check_images(path, images, labels)
    return TestData(images, labels.astype(np.int64), name=path.name, source=str(path))


def load_test_data(data: str, data_dir: str, n: int, *, files_allowed: bool = True) -> TestData:
    """A dataset name (its test split, through akd_edge.data) or, when ``files_allowed``, an ``.npz`` file.

    A dataset name read from the model or its report gets ``files_allowed=False``: it is a name, never a path.
    """
    if files_allowed and (data.endswith(".npz") or Path(data).is_file()):
        return load_npz(Path(data), n)
    from akd_edge.data import load_test_split

    test, meta = load_test_split(data, data_dir, n)
    return TestData(test.images, test.labels, name=data, source=data_dir or "default location")
