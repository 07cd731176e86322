"""Datasets by name, split into train / val / test deterministically from the run's seed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from akd_edge.core.errors import ConfigError, DataError
from akd_edge.data.base import DATASETS, DatasetSplits, ImageDataset, Loader, channel_stats, seeded_rng
from akd_edge.data.unlabeled import choose_labeled, load_unlabeled, without_labels

if TYPE_CHECKING:
    from akd_edge.config import DataConfig

log = logging.getLogger(__name__)


def get_loader(name: str) -> Loader:
    """The registered loader of dataset ``name``; an unknown name is a ConfigError listing the known ones."""
    try:
        return DATASETS.get(name)
    except KeyError as err:
        raise ConfigError(f"data.name: {err.args[0]} (`akd-edge datasets` lists them)") from None


def list_datasets() -> list[tuple[str, str]]:
    """``(name, description)`` of every registered dataset, for ``akd-edge datasets``."""
    return [(name, DATASETS.help(name)) for name in DATASETS.names()]


def split_train_val(
    labels: np.ndarray, val_size: int, seed: int, *, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` of a seeded split; both in a seeded random order, disjoint, covering all.

    With ``stratify`` each class gives ``val_size`` in proportion to its size (largest remainders), so a
    small validation set still sees every class.
    """
    n = len(labels)
    if not 0 <= val_size < n:
        raise ConfigError(f"data.val_size={val_size} must be in [0, {n}) for a training set of {n} images; lower it")
    order = seeded_rng(seed, 0x5E1).permutation(n)
    if not stratify or val_size == 0:
        return order[val_size:], order[:val_size]
    classes, counts = np.unique(labels, return_counts=True)
    exact = val_size * counts / n
    quota = np.floor(exact).astype(np.int64)
    short = val_size - int(quota.sum())
    quota[np.argsort(-(exact - quota), kind="stable")[:short]] += 1
    shuffled = labels[order]
    cls = np.searchsorted(classes, shuffled)
    grouped = np.argsort(cls, kind="stable")  # positions in `order`, grouped by class, in shuffled order
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, dtype=np.int64)
    rank[grouped] = np.arange(n) - np.repeat(starts, counts)
    is_val = rank < quota[cls]
    return order[~is_val], order[is_val]


def load_dataset(cfg: DataConfig, seed: int, *, stratify: bool = True) -> DatasetSplits:
    """Load ``cfg.name`` and split it: ``cfg.val_size`` training images held out by ``seed``.

    The train part keeps a seeded random order and ``cfg.train_subset`` keeps its first N images; the test
    split is untouched. ``mean``/``std`` come from the whole training set, so they do not depend on the seed.
    With ``cfg.labeled`` the train part keeps the labels of N of those images and the validation split is not
    stratified, so no label of an image outside the labelled N and the validation split is read (except those
    scanned to fill the class quotas, :func:`~akd_edge.data.unlabeled.choose_labeled`).
    """
    loader = get_loader(cfg.name)
    data = loader(cfg.data_dir, parts=("train", "test"), download=cfg.download)
    assert data.train is not None and data.test is not None
    full_train = data.train
    mean, std = channel_stats(full_train.images)
    stratify = stratify and not cfg.labeled
    train_idx, val_idx = split_train_val(full_train.labels, cfg.val_size, seed, stratify=stratify)
    if cfg.train_subset:
        if cfg.train_subset > len(train_idx):
            log.warning(
                "data.train_subset=%d exceeds the %d training images left after validation; using all of them",
                cfg.train_subset,
                len(train_idx),
            )
        train_idx = train_idx[: cfg.train_subset]
    if data.test.input_shape != full_train.input_shape:
        raise DataError(
            f"{cfg.name}: test images are {data.test.input_shape}, training images {full_train.input_shape}"
        )
    train_idx, unlabeled = _split_labels(cfg, full_train, train_idx, seed, len(data.class_names))
    splits = DatasetSplits(
        name=cfg.name,
        train=full_train.subset(train_idx),
        val=full_train.subset(val_idx),
        test=data.test,
        num_classes=len(data.class_names),
        input_shape=full_train.input_shape,
        class_names=data.class_names,
        mean=mean,
        std=std,
        unlabeled=unlabeled,
    )
    log.info(
        "%s: %d train%s / %d val / %d test, %s, %d classes, from %s",
        cfg.name,
        len(splits.train),
        f" + {len(unlabeled)} unlabelled" if unlabeled is not None else "",
        len(splits.val),
        len(splits.test),
        "x".join(map(str, splits.input_shape)),
        splits.num_classes,
        data.source,
    )
    return splits


def _split_labels(
    cfg: DataConfig, train: ImageDataset, train_idx: np.ndarray, seed: int, num_classes: int
) -> tuple[np.ndarray, ImageDataset | None]:
    """The labelled training indices (``data.labeled``) and the unlabelled images (``data.unlabeled``)."""
    rest = np.empty(0, dtype=np.int64)
    if cfg.labeled:
        keep = choose_labeled(train.labels[train_idx], cfg.labeled, seed, num_classes)
        rest = np.delete(train_idx, keep)
        train_idx = train_idx[keep]
    if cfg.unlabeled == "none":
        return train_idx, None
    if cfg.unlabeled == "rest":
        return train_idx, without_labels(train.images[rest])
    return train_idx, load_unlabeled(cfg.unlabeled, train.input_shape)


def load_test_split(
    name: str, data_dir: str = "", n: int = 0, *, download: bool = False
) -> tuple[ImageDataset, dict[str, Any]]:
    """The test split only (what eval/verify need) and ``{name, num_classes, input_shape, class_names}``.

    ``n > 0`` keeps the first ``n`` test images. Only the test files need to be present.
    """
    if n < 0:
        raise ConfigError(f"n={n}: the number of test images must be >= 0 (0 = all)")
    data = get_loader(name)(data_dir, parts=("test",), download=download)
    assert data.test is not None
    test = data.test if not n or n >= len(data.test) else data.test.subset(np.arange(n))
    meta = {
        "name": name,
        "num_classes": len(data.class_names),
        "input_shape": data.test.input_shape,
        "class_names": data.class_names,
    }
    return test, meta
