"""The torch side of verification: white-box AutoAttack examples to transfer, and torch eager timings.

This is the only part of ``akd-edge verify`` that needs torch; the examples it makes are scored under
onnxruntime by the caller. Gradients come from the torch model the ONNX file was exported from, so an
int8 model is attacked by transfer (it has no gradients of its own) and by Square.

:func:`transfer_job` runs AutoAttack's cascade one batch per task (:mod:`akd_edge.verify.pool`), so the
batches run on several processes; :func:`autoattack_task` runs one of them on :func:`attack_copy` of the
model: each BatchNorm that follows a convolution folded into it, weights and inputs in channels_last memory
format, parameters frozen (the backward pass computes only the input gradient AutoAttack reads). It computes
the model's function up to float rounding (logits within about 1e-6) at about twice the speed of the
model as trained on CPUs. Its forward pass takes :data:`MICRO_BATCH` images at a time (activations that stay
in the CPU's cache): the logits and gradients are those of the whole batch at once, bit for bit on the CPUs
tested, so the examples are too.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from akd_edge.core.env import torch_threads
from akd_edge.core.errors import UsageError
from akd_edge.core.ort import as_float_images, measure_latency
from akd_edge.verify.pool import Job, PoolTask

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


def trusted_factory() -> str | None:
    """The factory :func:`trusting_factory` gave for this block (None outside one)."""
    return _trusted_factory.get()


def load_torch_model(checkpoint: str | Path, factory: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The source model in eval mode (``weights_only`` loading, through akd_edge.models.checkpoint).

    ``factory``: the trusted ``module:factory`` of a checkpoint of the user's own architecture (default: the
    one given to :func:`trusting_factory`, if any).
    """
    from akd_edge.models.checkpoint import load_model

    return load_model(checkpoint, factory=factory or _trusted_factory.get())


TRANSFER_BATCH = 250
"""Images per AutoAttack batch (its ``run_standard_evaluation`` default); each batch is seeded afresh."""
MICRO_BATCH = 50
"""Images per forward pass inside a batch (:class:`MicroBatched`): 250 Fashion-MNIST images of 16 channels
at 28x28 make 12.5 MB activations; 50 at a time ran the student's forward and backward 1.2x faster, with
the same results bit for bit (tests/test_verify_speed.py)."""


class MicroBatched(nn.Module):
    """``model`` run on ``size`` images at a time: per-sample layers (eval mode) give the same outputs and,
    through ``cat``, the same input gradients as one pass over the whole batch."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) <= self.size:
            return self.model(x)
        return torch.cat([self.model(part) for part in x.split(self.size)])


class ChannelsLastInput(nn.Module):
    """``model`` (channels_last weights) given its images in channels_last memory format."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from akd_edge.train.accel import as_input

        return self.model(as_input(x, channels_last=True))


def attack_copy(model: nn.Module) -> nn.Module:
    """The model AutoAttack differentiates: an eval-mode copy of ``model`` with each BatchNorm that follows a
    convolution folded into it (:func:`akd_edge.train.accel.fold_batchnorm`), channels_last weights and
    inputs, and no parameter requiring a gradient. The same function up to float rounding; on CPUs its input
    gradients take about half the time (``benchmarks/verify_speed.py``). ``model`` is left as it is."""
    from akd_edge.train.accel import fold_batchnorm

    fast = fold_batchnorm(model).to(memory_format=torch.channels_last)
    fast.requires_grad_(False)
    return ChannelsLastInput(fast)


@dataclass(frozen=True)
class CheckpointFile:
    """Where a worker loads the torch model from: the checkpoint file, its SHA-256, its trusted factory."""

    path: str
    sha256: str
    factory: str | None = None


_MODELS: dict[CheckpointFile, nn.Module] = {}
"""In a worker (or this process): the models loaded so far."""


def _model_of(source: nn.Module | CheckpointFile) -> nn.Module:
    """:func:`attack_copy` of ``source``, or of the model of a checkpoint file, loaded (``weights_only``) once per
    process and only while the file's SHA-256 is the one verify checked."""
    if isinstance(source, nn.Module):
        return attack_copy(source)
    if source not in _MODELS:
        from akd_edge.core.errors import CheckpointError
        from akd_edge.core.files import sha256_file

        if sha256_file(source.path) != source.sha256:
            raise CheckpointError(f"{source.path} changed while verify read it; verify again")
        while len(_MODELS) >= 4:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[source] = attack_copy(load_torch_model(source.path, source.factory)[0])
    return _MODELS[source]


def autoattack_task(
    source: nn.Module | CheckpointFile,
    attack: str,
    x: np.ndarray,
    y: np.ndarray,
    settings: dict[str, Any],
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """One batch of one attack of AutoAttack (a task of :func:`transfer_job`): ``(x_adv, fooled, warnings)``."""
    from akd_edge.attacks.autoattack import autoattack_batch

    model = _model_of(source)
    units = PASSES_PER_BATCH.get(attack, 100)
    counter = None if progress is None else (lambda done, _total: progress(done))
    with counting_passes(model, counter, units):
        x_adv, fooled, warnings = autoattack_batch(
            MicroBatched(model, MICRO_BATCH), attack, torch.from_numpy(x), torch.from_numpy(y), **settings
        )
    return x_adv.cpu().numpy().astype(np.float32), fooled.numpy(), warnings


def transfer_job(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    norm: str,
    eps: float,
    version: str = "fast",
    seed: int = 0,
    batch_size: int = TRANSFER_BATCH,
    source: CheckpointFile | None = None,
) -> Job:
    """AutoAttack ``version`` on the torch model, as :func:`run_autoattack_report` runs it (a cascade: each
    attack on the images still robust, in batches of ``batch_size``), one task per batch of each attack.

    A job of :func:`akd_edge.verify.pool.run_jobs`: it yields the batches of one attack, is sent their
    results, and returns ``(x_adv float32 numpy, settings and torch-side accuracy)``, the examples of
    :func:`run_autoattack_report` on the whole set. ``source``: the checkpoint ``model`` was loaded
    from, which workers load themselves (else ``model`` goes to them with every task).
    """
    from akd_edge.attacks.autoattack import STANDARD_QUERIES, VERSIONS, autoattack_settings, check_args, min_classes
    from akd_edge.models.mode import eval_mode

    check_args(norm, eps, version, STANDARD_QUERIES, batch_size)
    start = time.perf_counter()
    x = torch.from_numpy(as_float_images(images))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    with eval_mode(model), torch.no_grad():
        logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    n_classes = int(logits.shape[1])
    if n_classes < min_classes(version):
        raise UsageError(
            f"the targeted attacks of AutoAttack need at least 4 classes, the model has {n_classes}; "
            "use --transfer none"
        )
    clean = logits.argmax(1) == y
    x_adv, robust, warnings = x.clone(), clean.clone(), []
    settings = {"norm": norm, "eps": eps, "seed": seed, "n_classes": n_classes}
    for attack in VERSIONS[version]:
        batches = [idx for idx in robust.nonzero().flatten().split(batch_size) if len(idx)]
        results = yield [
            PoolTask(
                autoattack_task,
                (source or model, attack, x[idx].numpy(), y[idx].numpy(), settings),
                PASSES_PER_BATCH[attack],
            )
            for idx in batches
        ]
        for idx, (adv, fooled, found) in zip(batches, results, strict=True):
            hit = idx[torch.from_numpy(fooled)]
            x_adv[hit] = torch.from_numpy(adv)[torch.from_numpy(fooled)]
            robust[hit] = False
            warnings += [message for message in found if message not in warnings]
        log.debug("%s: robust %d/%d", attack, int(robust.sum()), len(robust))
    for message in warnings:
        log.warning("AutoAttack check: %s", message)
    info = {
        **autoattack_settings(version, norm, eps, seed, STANDARD_QUERIES, n_classes, False, len(x)),
        "torch_clean_acc": float(clean.float().mean()),
        "torch_robust_acc": float(robust.float().mean()),
        "seconds": round(time.perf_counter() - start, 1),
        "autoattack_warnings": warnings,
    }
    return x_adv.numpy().astype(np.float32), info


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
