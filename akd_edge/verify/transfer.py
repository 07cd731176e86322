"""The torch side of verification: white-box AutoAttack examples to transfer, and torch eager timings.

This is the only part of ``akd-edge verify`` that needs torch; the examples it makes are scored under
onnxruntime by the caller. Gradients come from the torch model the ONNX file was exported from, so an
int8 model is attacked by transfer (it has no gradients of its own) and by Square.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from akd_edge.core.env import torch_threads
from akd_edge.core.ort import as_float_images, measure_latency

log = logging.getLogger(__name__)

_trusted_factory: contextvars.ContextVar[str | None] = contextvars.ContextVar("trusted_factory", default=None)


@contextlib.contextmanager
def trusting_factory(factory: str | None) -> Iterator[None]:
    """Within the block, :func:`load_torch_model` rebuilds a ``module:factory`` checkpoint with ``factory``.

    For ``akd-edge verify --model-factory`` until :func:`akd_edge.verify.command.verify_export` takes the
    factory as an argument; a context variable, so nothing outside the block (or another thread) sees it.
    """
    token = _trusted_factory.set(factory)
    try:
        yield
    finally:
        _trusted_factory.reset(token)


def load_torch_model(checkpoint: str | Path, factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The source model in eval mode (``weights_only`` loading, through akd_edge.models.checkpoint).

    ``factory``: the trusted ``module:factory`` of a checkpoint of the user's own architecture (default: the
    one given to :func:`trusting_factory`, if any).
    """
    from akd_edge.models.checkpoint import load_model

    return load_model(checkpoint, factory=factory or _trusted_factory.get())


def transfer_examples(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    norm: str,
    eps: float,
    version: str = "fast",
    seed: int = 0,
    batch_size: int = 250,
    threads: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """AutoAttack on the torch model; returns ``(x_adv float32 numpy, settings and torch-side accuracy)``.

    ``progress(done, total)``: the model's forward passes so far against an estimate of all of them.
    """
    from akd_edge.attacks.autoattack import run_autoattack_report

    x = torch.from_numpy(as_float_images(images))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    total = expected_passes(version, len(x), batch_size)
    with torch_threads(threads), counting_passes(model, progress, total):
        result = run_autoattack_report(
            model, x, y, norm=norm, eps=eps, version=version, seed=seed, batch_size=batch_size
        )
    info = {
        **result.settings,
        "torch_clean_acc": float(result.clean.float().mean()),
        "torch_robust_acc": float(result.robust.float().mean()),
        "seconds": round(result.seconds, 1),
        "autoattack_warnings": list(result.warnings),
    }
    return result.x_adv.cpu().numpy().astype(np.float32), info


PASSES_PER_BATCH = {"apgd-ce": 100, "apgd-t": 900, "fab-t": 900, "square": 5000}
"""About how many forward passes each attack of AutoAttack makes per batch (APGD: 100 iterations; the targeted
attacks: 9 target classes of 100 iterations; Square: its queries): a progress estimate, not a promise."""


def expected_passes(version: str, n: int, batch_size: int) -> int:
    """About how many forward passes AutoAttack ``version`` makes on ``n`` images (every one attacked)."""
    from akd_edge.attacks.autoattack import VERSIONS

    batches = -(-n // batch_size)
    return max(1, batches * sum(PASSES_PER_BATCH.get(attack, 100) for attack in VERSIONS[version]))


@contextlib.contextmanager
def counting_passes(model: nn.Module, progress: Callable[[int, int], None] | None, total: int) -> Iterator[None]:
    """Within the block, ``progress(passes, total)`` after each forward pass of ``model`` (capped below
    ``total`` until the block ends, since ``total`` is an estimate), then ``progress(total, total)``."""
    if progress is None:
        yield
        return
    done = [0]

    def count(*_: Any) -> None:
        done[0] += 1
        progress(min(done[0], total - 1), total)

    handle = model.register_forward_hook(count)
    try:
        yield
    finally:
        handle.remove()
    progress(total, total)


def torch_latency(model: nn.Module, input_shape: tuple[int, ...], threads: int = 0, **kwargs: Any) -> dict[str, Any]:
    """Eager torch timings on the CPU (inference mode), comparable with :func:`ort_latency`."""

    def run(x: np.ndarray) -> Any:
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    model.eval()
    with torch_threads(threads):
        result = measure_latency(run, input_shape, **kwargs)
        result["threads"] = torch.get_num_threads()
    result["runtime"] = f"torch {torch.__version__} eager"
    result["bytes"] = int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
    result["bytes_note"] = "state_dict tensors"
    return result
