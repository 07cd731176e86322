"""SVHN (cropped digits): the MATLAB files ``train_32x32.mat`` and ``test_32x32.mat`` (label 10 means digit 0)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from akd_edge.core.errors import DataError
from akd_edge.data import locate
from akd_edge.data.base import DATASETS, ImageDataset, LoadedData, read_parts
from akd_edge.data.download import SOURCES, fetch_dataset_files

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
"""The ``.mat`` file of each split."""


def read_mat(path: Path) -> ImageDataset:
    """One SVHN .mat file: ``X`` uint8 [32, 32, 3, N] and ``y`` [N, 1] in 1..10, as NCHW images and digits 0..9."""
    from scipy.io import loadmat  # scipy is heavy; only SVHN needs it

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except (ValueError, NotImplementedError, OSError, TypeError) as err:
        raise DataError(f"cannot read {path}: {err}; re-download it") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} is not an SVHN file: it lacks the X and y variables")
    images, labels = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[2] != 3 or images.shape[3] != labels.shape[0]:
        raise DataError(
            f"{path}: expected X uint8 [H, W, 3, N] and N labels, got {images.dtype} {images.shape}, "
            f"{labels.shape[0]} labels"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 10):
        raise DataError(f"{path}: labels must be in 1..10 (10 = digit 0), got {labels.min()}..{labels.max()}")
    return ImageDataset(np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels.astype(np.int64) % 10)


@DATASETS.register("svhn", help="SVHN cropped digits: 73k/26k colour 32x32 house-number images, 10 classes")
def svhn(data_dir: str = "", *, parts: tuple[str, ...] = ("train", "test"), download: bool = False) -> LoadedData:
    names = [SVHN_FILES[part] for part in parts]
    folder = locate.resolve(
        "svhn",
        [(n,) for n in names],
        data_dir=data_dir,
        download=download,
        fetch=lambda target: fetch_dataset_files("svhn", names, target),
        how_to_get=locate.how_to_get("svhn", SOURCES["svhn"].urls),
    )
    return read_parts(
        "svhn", folder, parts, lambda part: read_mat(folder / SVHN_FILES[part]), tuple(str(d) for d in range(10))
    )
