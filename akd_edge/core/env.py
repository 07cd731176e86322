"""The machine a number was measured on: the device to run on and the package versions behind a result.

One resolver of ``run.device``/``--device`` and one version stamp, used by training, eval, compress and
export alike. torch is imported only when a device is resolved.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
from collections.abc import Iterator
from typing import TYPE_CHECKING

from akd_edge.core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

VERSIONED = ("akd-edge", "torch", "numpy", "onnx", "onnxruntime", "torch-pruning", "pyautoattack", "matplotlib")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a torch device.

    Asking for a device this machine lacks is a ConfigError (exit code 2), not a CUDA traceback later.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but CUDA is not available; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} asked for, but MPS is not available; use auto or cpu")
    return device


def model_device(model: nn.Module) -> torch.device:
    """The device ``model``'s parameters are on (CPU for a model without parameters)."""
    import torch

    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def forked_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """torch's random state of the CPU and of ``device`` (when a GPU) put back when the block ends: what the block
    draws (an attack's seeded random starts) leaves the caller's random numbers as they were."""
    import torch

    return torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])


def package_versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    """Python's and each package's installed version (None when not installed), for reports."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS has none): a busy machine slows every timing."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def check_threads(threads: int, what: str = "threads") -> None:
    """Refuse a thread count below 0 or above this machine's CPU count, naming the setting ``what``."""
    cpus = os.cpu_count() or 1
    if not 0 <= threads <= cpus:
        raise ConfigError(f"{what}={threads}: must be from 0 (the default) to {cpus}, the CPUs of this machine")


@contextlib.contextmanager
def torch_threads(threads: int, what: str = "threads") -> Iterator[None]:
    """torch's intra-op thread count set to ``threads`` for the block (0: left as it is), restored afterwards.

    On a small machine shared with other work, 1 thread can be far faster than one per core: torch's
    OpenMP threads wait on each other whenever one is descheduled. More threads than CPUs (``what`` names the
    setting) is a ConfigError: OpenMP crashes on absurd counts (100000 ended in a segfault).
    """
    import torch

    check_threads(threads, what)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if threads:
            torch.set_num_threads(previous)
