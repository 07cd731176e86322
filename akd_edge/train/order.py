"""The order of the training images in each epoch: a function of ``(seed, epoch)`` alone, so a run resumes at
any batch. A shuffle of the training images, or with unlabelled images and ``data.labeled_fraction`` the
labelled and unlabelled images mixed in each batch."""

from __future__ import annotations

import numpy as np

from akd_edge.config import DataConfig
from akd_edge.core.errors import ConfigError
from akd_edge.data import epoch_order, mixed_order, num_batches


class EpochOrder:
    """Each epoch's order of the training images: ``labeled`` labelled ones followed by ``unlabeled`` ones that
    the teachers labelled (None: the data has no unlabelled images)."""

    def __init__(self, labeled: int, unlabeled: int | None, data: DataConfig, seed: int) -> None:
        self.labeled, self.total, self.seed = labeled, labeled + (unlabeled or 0), seed
        self.batch_size, self.fraction = data.batch_size, data.labeled_fraction
        self.mixed = unlabeled is not None and self.fraction != 0
        self.length = len(self(0))
        """Images an epoch draws: the training images, or with ``data.labeled_fraction`` the unlabelled ones
        plus the labelled ones repeated beside them."""
        self.steps = num_batches(self.length, self.batch_size)
        """Batches (optimiser steps) per epoch."""

    def __call__(self, epoch: int) -> np.ndarray:
        """The training images' order in ``epoch``: shuffled, or labelled and unlabelled images mixed in each
        batch by ``data.labeled_fraction``."""
        if not self.mixed:
            return epoch_order(self.total, shuffle=True, seed=self.seed, epoch=epoch)
        return mixed_order(self.labeled, self.total, self.batch_size, self.fraction, seed=self.seed, epoch=epoch)

    def global_size(self, batch: int) -> int:
        """Images in global batch number ``batch`` of an epoch."""
        return min(self.batch_size, self.length - batch * self.batch_size)

    def check_shards(self, world: int) -> None:
        """Every rank needs a part of every batch: the smallest batch (the last one) must have a row per rank."""
        n, size = self.length, self.batch_size
        smallest = min(size, n % size or size)
        if smallest < world:
            raise ConfigError(
                f"data.batch_size={size} is the global batch, shared by {world} ranks: the "
                f"{'last batch of an epoch has' if smallest < size else 'batch has'} {smallest} images "
                f"({n} training images), fewer than the ranks; choose a batch size that leaves each rank some"
            )
