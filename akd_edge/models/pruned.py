"""The pruning history of a checkpoint: saved as plain lists, replayed on a freshly built model.

A pruned model is stored as the original architecture's name plus the torch-pruning history: the list
of ``[module name, out-channel pruning?, channel indices]`` operations. :func:`rebuild_pruned` replays
that history on a freshly built model before its ``state_dict`` is loaded, so a pruned checkpoint loads
with ``torch.load(weights_only=True)`` like any other (as Torch-Pruning's own ``tests/test_load.py``).

This module sits beside the checkpoints and below everything else: it imports torch and torch-pruning
(when called), never the pruning pipeline, the training loop or the CLI.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from akd_edge.core.env import model_device
from akd_edge.core.errors import CheckpointError
from akd_edge.models.mode import eval_mode

PRUNING_FORMAT = "akd-edge-pruning/1"
"""Format tag of the ``pruning`` entry of a checkpoint."""


def plain_history(history: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """torch-pruning's history as plain lists of str/bool/int, safe for ``torch.load(weights_only=True)``.

    Entries that removed nothing (rounding can cancel a layer's step) are dropped: replaying them is a no-op.
    """
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history if len(idxs)]


def pruning_record(
    history: Iterable[Sequence[Any]], input_shape: Sequence[int], settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``pruning`` entry of a checkpoint: the history and what :func:`rebuild_pruned` needs to replay it."""
    import torch_pruning as tp

    return {
        "format": PRUNING_FORMAT,
        "library": f"torch-pruning {tp.__version__}",
        "example_shape": [1, *(int(v) for v in input_shape)],
        "history": plain_history(history),
        "settings": dict(settings or {}),
    }


def _example_shape(pruning: dict[str, Any]) -> list[int]:
    """The entry's ``example_shape``: ``[1, C, H, W]`` within the sizes models are built for, checked before the
    example is allocated (the checkpoint may come from anyone)."""
    from akd_edge.models.zoo import MAX_CHANNELS, MAX_SIDE

    shape = pruning.get("example_shape")
    plain = isinstance(shape, (list, tuple)) and len(shape) == 4 and all(type(v) is int for v in shape)
    if not (plain and shape[0] == 1 and 1 <= shape[1] <= MAX_CHANNELS and all(1 <= v <= MAX_SIDE for v in shape[2:])):
        raise CheckpointError(
            f"the checkpoint's pruning entry has example_shape {shape!r:.80}, expected [1, channels, height, width] "
            f"with at most {MAX_CHANNELS} channels and {MAX_SIDE}x{MAX_SIDE} pixels; the checkpoint is damaged: "
            "use the file akd-edge compress wrote"
        )
    return list(shape)


def _history(pruning: dict[str, Any]) -> list[list[Any]]:
    """The entry's history as plain lists, or a CheckpointError saying what shape it must have."""
    try:
        return plain_history(pruning["history"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(
            f"the checkpoint's pruning history is not a list of [module name, out-channels?, channel indices] "
            f"entries ({err}); the checkpoint is damaged: use the file akd-edge compress wrote"
        ) from None


def rebuild_pruned(model: nn.Module, pruning: dict[str, Any]) -> nn.Module:
    """Replay a checkpoint's pruning history on a freshly built (unpruned) ``model``, in place; returns it."""
    import torch_pruning as tp

    if not isinstance(pruning, dict) or pruning.get("format") != PRUNING_FORMAT or "history" not in pruning:
        raise CheckpointError(
            f"the checkpoint's pruning entry is not an akd-edge pruning history (expected format {PRUNING_FORMAT!r})"
        )
    history, shape = _history(pruning), _example_shape(pruning)
    device = model_device(model)
    example = torch.zeros(*shape, device=device)
    try:
        with eval_mode(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
            graph.load_pruning_history(history)
    except (AttributeError, IndexError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"cannot replay the pruning history on {type(model).__name__} ({err}); was the checkpoint pruned "
            f"from this architecture? It was pruned with {pruning.get('library', 'an unknown torch-pruning')}"
        ) from None
    return model
