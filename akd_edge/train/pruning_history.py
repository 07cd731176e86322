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

from akd_edge.attacks._mode import eval_mode
from akd_edge.errors import CheckpointError

FORMAT = "akd-edge-pruning/1"
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
        "format": FORMAT,
        "library": f"torch-pruning {tp.__version__}",
        "example_shape": [1, *(int(v) for v in input_shape)],
        "history": plain_history(history),
        "settings": dict(settings or {}),
    }


def rebuild_pruned(model: nn.Module, pruning: dict[str, Any]) -> nn.Module:
    """Replay a checkpoint's pruning history on a freshly built (unpruned) ``model``, in place; returns it."""
    import torch_pruning as tp

    if not isinstance(pruning, dict) or pruning.get("format") != FORMAT or "history" not in pruning:
        raise CheckpointError(
            f"the checkpoint's pruning entry is not an akd-edge pruning history (expected format {FORMAT!r})"
        )
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    example = torch.zeros(*(int(v) for v in pruning["example_shape"]), device=device)
    try:
        with eval_mode(model), torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
            graph.load_pruning_history(plain_history(pruning["history"]))
    except (AttributeError, IndexError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"cannot replay the pruning history on {type(model).__name__} ({err}); was the checkpoint pruned "
            f"from this architecture? It was pruned with {pruning.get('library', 'an unknown torch-pruning')}"
        ) from None
    return model
