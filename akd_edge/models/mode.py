"""``eval_mode``: run a model in eval mode and give every submodule back its own previous mode."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Switch ``model`` to eval mode for the block, then restore each submodule's ``training`` flag.

    The flags are recorded per submodule (a model may be partly frozen, with some BatchNorm layers in
    eval mode), and restored even when the block raises: torchattacks issue #21 left models in eval
    mode after an attack. The flags are set directly, because ``train()`` recurses and may be overridden.
    """
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in flags:
            module.training = was_training
