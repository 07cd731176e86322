"""Fashion-MNIST and MNIST: the IDX files, gzip-compressed or not."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.data import locate
from akd_edge.data.base import DATASETS, ImageDataset, LoadedData, read_parts
from akd_edge.data.download import SOURCES, fetch_dataset_files

FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DIGITS = tuple(str(d) for d in range(10))

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
"""The IDX files (images, labels) of each split, without the ``.gz`` they may carry."""
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


GZIP_MAX_RATIO = 1032
"""Deflate expands at most about 1032:1, so a gzip file of S bytes holds at most that times S bytes."""


def _check_size(path: Path, gzipped: bool, header_bytes: int, dims: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse header dimensions the file cannot hold, before allocating them (a crafted header asks for TBs)."""
    data_bytes = math.prod(dims) * dtype.itemsize
    file_bytes = path.stat().st_size
    if gzipped:
        with path.open("rb") as fh:  # the gzip trailer holds the uncompressed size modulo 2**32
            fh.seek(-4, 2)
            stored = int.from_bytes(fh.read(4), "little")
        fits = (header_bytes + data_bytes) % 2**32 == stored and data_bytes <= GZIP_MAX_RATIO * file_bytes
    else:
        fits = header_bytes + data_bytes == file_bytes
    if not fits:
        raise DataError(
            f"{path}: its header announces shape {dims} ({data_bytes:,} bytes of data), which does not match the "
            "file's size; the file is truncated or corrupt, re-download it"
        )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip detected from its magic bytes) straight into a writable numpy array."""
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    try:
        with opener(path, "rb") as fh:
            header = fh.read(4)
            if len(header) != 4 or header[:2] != b"\0\0" or header[2] not in _IDX_DTYPES:
                raise DataError(f"{path} is not an IDX file (bad magic {header.hex()}); re-download it")
            ndim = header[3]
            dims = tuple(int.from_bytes(fh.read(4), "big") for _ in range(ndim))
            dtype = np.dtype(_IDX_DTYPES[header[2]])
            _check_size(path, gzipped, 4 + 4 * ndim, dims, dtype)
            array = np.empty(dims, dtype=dtype)
            got = fh.readinto(memoryview(array).cast("B")) if array.size else 0
            if got != array.nbytes or fh.read(1):
                raise DataError(
                    f"{path}: expected {array.nbytes} data bytes for shape {dims}; the file is truncated "
                    "or corrupt, re-download it"
                )
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {path}: {err}; re-download it") from None
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_part(folder: Path, images_name: str, labels_name: str) -> ImageDataset:
    images_path = locate.pick(folder, (images_name + ".gz", images_name))
    labels_path = locate.pick(folder, (labels_name + ".gz", labels_name))
    assert images_path is not None and labels_path is not None  # resolve() checked
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images [N, H, W], got {images.dtype} {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{images_path} holds no images; re-download it, or point data_dir at a complete copy")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: {labels.shape[0] if labels.ndim else '?'} labels for {images.shape[0]} images")
    return ImageDataset(images[:, None, :, :], labels.astype(np.int64))


def load_idx_dataset(
    name: str, class_names: tuple[str, ...], data_dir: str, parts: tuple[str, ...], download: bool
) -> LoadedData:
    """Find (or download) the IDX files of ``parts`` and read them."""
    stems = [stem for part in parts for stem in IDX_FILES[part]]
    required = [(stem + ".gz", stem) for stem in stems]
    folder = locate.resolve(
        name,
        required,
        data_dir=data_dir,
        download=download,
        fetch=lambda target: fetch_dataset_files(name, [s + ".gz" for s in stems], target),
        how_to_get=locate.how_to_get(name, SOURCES[name].urls),
    )
    return read_parts(name, folder, parts, lambda part: _read_part(folder, *IDX_FILES[part]), class_names)


@DATASETS.register("fashion-mnist", help="Zalando Fashion-MNIST: 60k/10k grey 28x28 clothing images, 10 classes")
def fashion_mnist(
    data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False
) -> LoadedData:
    return load_idx_dataset("fashion-mnist", FASHION_CLASSES, data_dir, parts, download)


@DATASETS.register("mnist", help="MNIST handwritten digits: 60k/10k grey 28x28 images, 10 classes")
def mnist(data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False) -> LoadedData:
    return load_idx_dataset("mnist", DIGITS, data_dir, parts, download)
