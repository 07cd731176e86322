"""Training under torchrun, the parts only training needs: the student wrapped in DistributedDataParallel,
BatchNorm made SyncBatchNorm for the run's length, and each rank's own random stream. Moving values between
ranks is :mod:`akd_edge.core.distributed`'s."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from akd_edge.core.errors import ConfigError


def rank_seed(seed: int, *words: int) -> int:
    """A seed for torch derived from ``seed`` and ``words`` (a rank, an epoch...): independent streams per rank."""
    import numpy as np

    state = np.random.SeedSequence([seed % 2**63, *words]).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel (gradients averaged in backward; rank 0's buffers broadcast
    before each forward). The wrapper holds the same parameters; save and attack through ``model`` itself."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def check_sync_bn(device: torch.device) -> None:
    """Refuse ``train.sync_bn`` where PyTorch's SyncBatchNorm cannot run (it needs CUDA tensors)."""
    if device.type != "cuda":
        raise ConfigError(
            f"train.sync_bn=true: PyTorch's SyncBatchNorm runs on GPUs only, this run is on {device}; "
            "set train.sync_bn=false (BatchNorm statistics are then per rank)"
        )


def use_sync_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Replace ``model``'s BatchNorm layers by SyncBatchNorm, in place; returns what puts them back.

    The replacements share the layers' parameters and buffers; putting the originals back copies the trained
    values into them, so the model keeps its own classes (for pruning, export and checkpoints) after training.
    """
    check_sync_bn(device)
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, nn.SyncBatchNorm):
                sync = nn.SyncBatchNorm.convert_sync_batchnorm(child)
                setattr(parent, name, sync)
                swaps.append((parent, name, child, sync))

    def restore() -> None:
        for parent, name, original, sync in swaps:
            original.load_state_dict(sync.state_dict())
            setattr(parent, name, original)

    return restore
