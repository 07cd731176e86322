"""Batches as tensors, cut from the in-memory uint8 arrays: fast, seeded, and resumable mid-epoch.

The sample order of an epoch is a function of ``(seed, epoch)`` and the augmentation of a batch a
function of ``(seed, epoch, batch index)``, so a run resumed at ``start_batch`` sees exactly the batches
an uninterrupted run would have. torch is imported only when batches are made.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from akd_edge.data.base import ImageDataset, seeded_rng

if TYPE_CHECKING:
    import torch

PAD = 4
"""Zero padding of the random crop, in pixels."""
_ORDER, _AUGMENT = 0x0D, 0xA6  # stream tags, so order and augmentation never share random numbers


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    """Batches in an epoch of ``n`` samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return n // batch_size if drop_last else -(-n // batch_size)


def epoch_order(n: int, *, shuffle: bool, seed: int, epoch: int) -> np.ndarray:
    """Sample indices of one epoch: ``0..n-1``, or a permutation that depends only on ``(seed, epoch)``."""
    return seeded_rng(_ORDER, seed, epoch).permutation(n) if shuffle else np.arange(n)


_LABELED, _UNLABELED = 0x1A, 0x0A


def mixed_order(n_labeled: int, n: int, batch_size: int, fraction: float, *, seed: int, epoch: int) -> np.ndarray:
    """One epoch's sample order over ``n_labeled`` labelled images (indices ``0..n_labeled-1``) followed by
    unlabelled ones: every full batch takes ``round(fraction * batch_size)`` labelled images, the labelled ones
    cycling in fresh seeded permutations as often as needed, and the epoch is one pass over the unlabelled ones.

    A function of ``(seed, epoch)`` only, like :func:`epoch_order`; cut it into batches of ``batch_size``.
    """
    per_batch = round(fraction * batch_size)
    n_unlabeled = n - n_labeled
    if not 0 < per_batch < batch_size or n_labeled < 1 or n_unlabeled < 1:
        raise ValueError(
            f"a batch of {batch_size} with labelled fraction {fraction} needs labelled and unlabelled images in "
            f"every batch (got {per_batch} labelled per batch, {n_labeled} labelled, {n_unlabeled} unlabelled)"
        )
    free = batch_size - per_batch
    batches = -(-n_unlabeled // free)
    unlabeled = n_labeled + seeded_rng(_ORDER, _UNLABELED, seed, epoch).permutation(n_unlabeled)
    rng = seeded_rng(_ORDER, _LABELED, seed, epoch)
    passes = -(-batches * per_batch // n_labeled)
    labeled = np.concatenate([rng.permutation(n_labeled) for _ in range(passes)])
    parts = []
    for b in range(batches):
        parts += [labeled[b * per_batch : (b + 1) * per_batch], unlabeled[b * free : (b + 1) * free]]
    return np.concatenate(parts)


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of a batch of ``n`` that rank ``rank`` of ``world`` takes: contiguous, disjoint,
    covering the batch, sizes differing by at most one."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return rank * n // world, (rank + 1) * n // world


def augment_batch(images: np.ndarray, rng: np.random.Generator, rows: tuple[int, int, int] | None = None) -> np.ndarray:
    """Random crop with zero padding ``PAD`` and random horizontal flip, vectorised over uint8 [B, C, H, W].

    ``rows=(lo, hi, n)``: ``images`` are rows ``lo..hi`` of a batch of ``n``; the random draws are made for all
    ``n`` rows and these rows get theirs, as they would in the whole batch.
    """
    b, _, h, w = images.shape
    lo, hi, n = rows if rows is not None else (0, b, b)
    if hi - lo != b:
        raise ValueError(f"rows {lo}..{hi} do not match the {b} images given")
    padded = np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))
    top = rng.integers(0, 2 * PAD + 1, size=n)[lo:hi]
    left = rng.integers(0, 2 * PAD + 1, size=n)[lo:hi]
    flip = (rng.random(n) < 0.5)[lo:hi]
    windows = sliding_window_view(padded, (h, w), axis=(2, 3))  # a view [B, C, 2*PAD+1, 2*PAD+1, H, W]
    out = windows[np.arange(b), :, top, left]  # one gather: a copy [B, C, H, W]
    out[flip] = out[flip][..., ::-1]
    return out


def iterate_batches(
    ds: ImageDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    augment: bool = False,
    device: str | torch.device = "cpu",
    drop_last: bool = False,
    prefetch: int = 0,
    shard: tuple[int, int] | None = None,
    order: np.ndarray | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x float32 NCHW in [0, 1], y int64, idx int64)``; ``idx`` are the samples' indices in ``ds``.

    Batches before ``start_batch`` are skipped without being built. ``drop_last`` drops a final partial
    batch (``num_batches(len(ds), batch_size, drop_last)`` counts the batches either way). ``prefetch > 0``
    builds up to that many batches ahead in a background thread (pinned memory and asynchronous copies on
    CUDA), overlapping batch making with the step; the batches, their order and augmentation are the same.
    Every ``x`` is in [0, 1] by construction (uint8 / 255), so attacks on these batches need no range check.
    ``shard=(rank, world)`` yields only this rank's rows of each batch (:func:`shard_bounds`); ``idx`` says which.
    ``order`` replaces the epoch's sample order (``shuffle`` is then ignored), e.g. :func:`mixed_order`.
    """
    import torch

    device = torch.device(device)
    pin = prefetch > 0 and device.type == "cuda" and torch.cuda.is_available()
    if order is None:
        order = epoch_order(len(ds), shuffle=shuffle, seed=seed, epoch=epoch)
    host = _host_batches(ds, order, batch_size, seed, epoch, start_batch, augment, device, drop_last, pin, shard)
    if prefetch > 0:
        host = _prefetched(host, prefetch)
    for images, labels, idx in host:
        if device.type == "cpu":
            yield images, labels, idx
        else:  # uint8 shipped (4x fewer bytes) and converted on the device
            x = images.to(device, non_blocking=True).float().div_(255.0)
            yield x, labels.to(device, non_blocking=True), idx.to(device, non_blocking=True)


def _host_batches(
    ds: ImageDataset,
    order: np.ndarray,
    batch_size: int,
    seed: int,
    epoch: int,
    start_batch: int,
    augment: bool,
    device: torch.device,
    drop_last: bool,
    pin: bool,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Host tensors of each batch (or of this rank's ``shard`` of it): float32 images for a CPU run, uint8
    (pinned if ``pin``) for a device."""
    import torch

    total = num_batches(len(order), batch_size, drop_last)
    for batch in range(max(start_batch, 0), total):
        idx = order[batch * batch_size : (batch + 1) * batch_size]
        rows = None
        if shard is not None:
            lo, hi = shard_bounds(len(idx), *shard)
            rows, idx = (lo, hi, len(idx)), idx[lo:hi]
        images = ds.images[idx]
        if augment:
            images = augment_batch(images, seeded_rng(_AUGMENT, seed, epoch, batch), rows)
        if device.type == "cpu":  # numpy converts single-threaded: no OpenMP stalls on a busy machine
            x = torch.from_numpy(np.divide(images, np.float32(255.0), dtype=np.float32))
        else:
            x = torch.from_numpy(np.ascontiguousarray(images))
        y = torch.from_numpy(ds.labels[idx])
        index = torch.from_numpy(idx.astype(np.int64))
        if pin:
            x, y, index = x.pin_memory(), y.pin_memory(), index.pin_memory()
        yield x, y, index


_DONE = object()


def _prefetched(source: Iterator, depth: int) -> Iterator:
    """``source``'s items, produced up to ``depth`` ahead by one thread (so in order); the thread stops when
    the consumer does (break, exception) and its exceptions are raised in the consumer."""
    import queue
    import threading

    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            items.put(err)

    worker = threading.Thread(target=produce, name="akd-edge-batches", daemon=True)
    worker.start()
    try:
        while True:
            item = items.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)
