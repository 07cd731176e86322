"""Images without labels (``data.unlabeled``): which training images lose their labels, and the user's own.

The labelled N are chosen class by class along a seeded order of the training pool: each class takes its quota
(N split as evenly as the classes allow) from the images it meets first. Only the labels of the images scanned
until every quota is full are read; the other images' labels are never looked at. Unlabelled images are held
with labels ``-1``, so nothing downstream can read a hidden label.
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.data.base import ImageDataset, seeded_rng

log = logging.getLogger(__name__)

NO_LABEL = -1
"""The label every unlabelled image carries."""
_LABELED_STREAM = 0x1AB


def choose_labeled(labels: np.ndarray, n: int, seed: int, num_classes: int) -> np.ndarray:
    """Positions of ``n`` images to keep labelled: class-balanced quotas filled along a seeded order.

    A class with fewer images than its quota gives all it has, and the free places go to the next images in
    the order, whatever their class. The result is sorted by that order.
    """
    total = len(labels)
    if not 0 < n < total:
        raise DataError(
            f"data.labeled={n} must be between 1 and {total - 1}: the training pool has {total} images after "
            "validation and data.train_subset; lower data.labeled or use 0 for all"
        )
    order = seeded_rng(_LABELED_STREAM, seed).permutation(total)
    quota = [n // num_classes + (c < n % num_classes) for c in range(num_classes)]
    chosen: list[int] = []
    skipped: list[int] = []
    for position in order:
        label = int(labels[position])
        if not 0 <= label < num_classes:
            raise DataError(f"training label {label} is outside the dataset's {num_classes} classes")
        if quota[label] > 0:
            quota[label] -= 1
            chosen.append(int(position))
            if len(chosen) == n:
                break
        else:
            skipped.append(int(position))
    chosen += skipped[: n - len(chosen)]  # classes too small for their quota: fill in scan order
    return np.asarray(chosen, dtype=np.int64)


def without_labels(images: np.ndarray) -> ImageDataset:
    """``images`` as a dataset whose every label is :data:`NO_LABEL`."""
    return ImageDataset(images, np.full(len(images), NO_LABEL, dtype=np.int64))


def load_unlabeled(path: str, input_shape: tuple[int, int, int]) -> ImageDataset:
    """The user's own images at ``path`` (a folder of images, an IDX file or an ``.npz`` with ``x``), checked
    against the dataset's ``(C, H, W)``."""
    source = Path(path).expanduser()
    if source.is_dir():
        images = _read_folder(source, input_shape)
    elif source.is_file() and source.suffix.lower() == ".npz":
        images = _read_npz(source)
    elif source.is_file():
        from akd_edge.data.idx import read_idx

        images = read_idx(source)
    else:
        raise DataError(
            f"data.unlabeled={path!r}: no such file or folder; give a folder of PNG/JPEG images, an IDX file, "
            'an .npz with an x array, "rest" or "none"'
        )
    images = _as_nchw(images, source, input_shape)
    if not len(images):
        raise DataError(f"data.unlabeled: {source} holds no images")
    log.info("unlabelled images: %d from %s", len(images), source)
    return without_labels(images)


def _read_folder(folder: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    from akd_edge.data.imagefolder import EXTENSIONS, open_image

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not files:
        raise DataError(f"data.unlabeled: {folder} holds no images ({', '.join(EXTENSIONS)})")
    channels, height, width = input_shape
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(files), channels, height, width), dtype=np.uint8)
    for i, file in enumerate(files):
        with open_image(file) as img:
            if img.size != (width, height):
                raise DataError(
                    f"data.unlabeled: {file} is {img.size[0]}x{img.size[1]} pixels, the dataset's images are "
                    f"{width}x{height}; resize your images to {width}x{height}"
                )
            pixels = np.asarray(img.convert(mode), dtype=np.uint8)
        out[i] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    return out


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise DataError(f"data.unlabeled: {path} has no array named x (it has {sorted(archive.files)})")
            return archive["x"]
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"data.unlabeled: cannot read {path} as an .npz file: {err}") from None


def _as_nchw(images: np.ndarray, source: Path, input_shape: tuple[int, int, int]) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` from ``[N, H, W]``, ``[N, C, H, W]`` or ``[N, H, W, C]``; anything else is a
    DataError naming the file, its shape and the expected one."""
    channels, height, width = input_shape
    expected = f"[N, {channels}, {height}, {width}] (or [N, {height}, {width}, {channels}]" + (
        f", [N, {height}, {width}])" if channels == 1 else ")"
    )
    if images.dtype != np.uint8:
        raise DataError(f"data.unlabeled: {source} holds {images.dtype} values; expected uint8 pixels 0-255")
    if images.ndim == 3 and channels == 1 and images.shape[1:] == (height, width):
        return images[:, None]
    if images.ndim == 4 and images.shape[1:] == (channels, height, width):
        return images
    if images.ndim == 4 and images.shape[1:] == (height, width, channels):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"data.unlabeled: {source} holds images of shape {list(images.shape)}; expected {expected}")
