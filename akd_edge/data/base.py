"""The in-memory dataset types and the DATASETS registry; numpy only, so the ONNX verifier can use them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.core.registry import Registry

log = logging.getLogger(__name__)

PARTS = ("train", "test")
"""The parts a loader can be asked for; validation is carved out of ``train`` by :mod:`akd_edge.data.splits`."""


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """Images as uint8 ``[N, C, H, W]`` with int64 labels ``[N]``; a whole split held in memory."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
            raise DataError(f"images must be a uint8 array [N, C, H, W], got {got}")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(f"labels must be a 1-D array of {images.shape[0]} entries, got shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"labels must be integers, got {labels.dtype}")
        object.__setattr__(self, "labels", labels.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return (int(c), int(h), int(w))

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageDataset:
        """The images at ``indices`` (copied), in that order."""
        index = np.asarray(indices, dtype=np.int64)
        return ImageDataset(self.images[index], self.labels[index])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """A dataset ready for training: train / val / test and what a model needs to know about them."""

    name: str
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    """``(C, H, W)``."""
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    """Per-channel mean of the full training set (before the validation split), for images in [0, 1]."""
    std: tuple[float, ...]
    """Per-channel standard deviation, computed like ``mean``."""
    unlabeled: ImageDataset | None = None
    """Training images without labels (``data.unlabeled``), their labels all ``-1``: nothing can read a
    hidden label, because none is carried. ``None`` when every training image is labelled."""


@dataclass(frozen=True, eq=False)
class LoadedData:
    """What a loader returns: the parts asked for (None for the others), class names and where they came from."""

    class_names: tuple[str, ...]
    train: ImageDataset | None = None
    test: ImageDataset | None = None
    source: str = ""
    """Folder the files were read from, or a description of generated data."""

    def __post_init__(self) -> None:
        for part in (self.train, self.test):
            if part is not None and len(part) and int(part.labels.max()) >= len(self.class_names):
                raise DataError(
                    f"labels go up to {int(part.labels.max())} but there are only {len(self.class_names)} "
                    f"class names (data from {self.source or 'unknown source'})"
                )
            if part is not None and len(part) and int(part.labels.min()) < 0:
                raise DataError(f"negative labels in data from {self.source or 'unknown source'}")


class Loader(Protocol):
    """A dataset loader: reads (or generates) the parts asked for."""

    def __call__(self, data_dir: str, *, parts: tuple[str, ...], download: bool) -> LoadedData: ...


DATASETS: Registry[Loader] = Registry("dataset")
"""Dataset name -> loader; filled by the modules of this package (``akd-edge datasets`` lists them)."""


def read_parts(
    name: str,
    folder: Path,
    parts: tuple[str, ...],
    read_part: Callable[[str], ImageDataset],
    class_names: tuple[str, ...],
) -> LoadedData:
    """Each of ``parts`` read from ``folder`` with ``read_part``, logged with the time reading took."""
    start = time.perf_counter()
    loaded = {part: read_part(part) for part in parts}
    log.info(
        "%s: read %s from %s in %.2f s",
        name,
        {p: len(d) for p, d in loaded.items()},
        folder,
        time.perf_counter() - start,
    )
    return LoadedData(class_names, source=str(folder), **loaded)


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of uint8 images, as if scaled to [0, 1].

    Integer sums of values and squares (255**2 fits uint16), chunk by chunk: no float copy of the set.
    """
    n = images.shape[0]
    pixels = n * images.shape[2] * images.shape[3]
    means, stds = [], []
    for channel in range(images.shape[1]):
        total, squares = 0, 0
        for start in range(0, n, chunk):
            block = images[start : start + chunk, channel].astype(np.uint16)
            total += int(block.sum(dtype=np.uint64))
            squares += int((block * block).sum(dtype=np.uint64))
        mean = total / pixels
        var = max(squares / pixels - mean * mean, 0.0)
        mean, std = mean / 255.0, float(np.sqrt(var)) / 255.0
        if std < 1e-6:
            log.warning("channel %d of the training images is constant; using std 1 for it", channel)
            std = 1.0
        means.append(float(mean))
        stds.append(std)
    return tuple(means), tuple(stds)


def seeded_rng(*words: int) -> np.random.Generator:
    """numpy's generator seeded by ``words`` (the seed, a stream tag, the epoch...; any ints, taken mod 2**63):
    the same words give the same numbers on every machine, and a tag of its own keeps each use's stream apart."""
    return np.random.default_rng([w % 2**63 for w in words])
