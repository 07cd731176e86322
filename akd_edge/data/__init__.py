"""The data layer: datasets by name, deterministic splits, and resumable batches.

Numpy only at import time (the ONNX verifier runs without torch); torch is imported by
:func:`iterate_batches` when it runs. Images are uint8 ``[N, C, H, W]`` in memory and float32 in [0, 1]
once batched. ``akd-edge datasets`` lists the registered names.
"""

from akd_edge.data import cifar, idx, imagefolder, svhn, synthetic  # noqa: F401  (register the loaders)
from akd_edge.data.base import DATASETS, DatasetSplits, ImageDataset, LoadedData, channel_stats
from akd_edge.data.batches import (
    augment_batch,
    epoch_order,
    iterate_batches,
    mixed_order,
    num_batches,
    shard_bounds,
)
from akd_edge.data.splits import get_loader, list_datasets, load_dataset, load_test_split, split_train_val

__all__ = [
    "DATASETS",
    "DatasetSplits",
    "ImageDataset",
    "LoadedData",
    "augment_batch",
    "channel_stats",
    "epoch_order",
    "get_loader",
    "iterate_batches",
    "list_datasets",
    "load_dataset",
    "load_test_split",
    "mixed_order",
    "num_batches",
    "shard_bounds",
    "split_train_val",
]
