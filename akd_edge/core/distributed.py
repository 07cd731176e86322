"""Data-parallel runs under torchrun: the process group, one rank's view of it, and the bookkeeping collectives.

``torchrun --nproc_per_node N -m akd_edge distill ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. The command joins the process group (:func:`join`: NCCL for CUDA tensors, gloo for CPU
ones, with a timeout) and the library finds it with :func:`current`. Gradients are averaged by PyTorch's own
``DistributedDataParallel`` (:mod:`akd_edge.train.parallel`, with SyncBatchNorm and per-rank seeds); this module only moves bookkeeping between ranks: loss
sums, the stop flag, evaluation flags, RNG states, the resume state, and the word that a rank failed.

When a rank dies the others stop in the next collective: gloo notices a closed connection at once, otherwise the
process-group timeout (:data:`ENV_TIMEOUT`, default :data:`DEFAULT_TIMEOUT_S` s) ends the wait. Either way a
collective here raises :class:`PeerLost`, which says so in one line.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from akd_edge.core.errors import ConfigError, UsageError

log = logging.getLogger(__name__)

ENV_TIMEOUT = "AKD_EDGE_DIST_TIMEOUT"
"""Environment variable: seconds a rank waits in a collective for the others before giving up."""
DEFAULT_TIMEOUT_S = 1800.0
"""PyTorch's own default for gloo: long enough for one rank to save a checkpoint or finish an evaluation batch
while the others wait."""
_ERROR_KEY = "akd-edge/error/"
T = TypeVar("T")


class PeerLost(Exception):
    """Another rank stopped (it died, was killed, or did not answer within the timeout): this one cannot go on."""

    def __init__(self, rank: int, detail: str) -> None:
        super().__init__(
            f"rank {rank}: lost contact with the other ranks ({detail}); another rank stopped or hung, "
            "its own output says why"
        )
        self.rank = rank


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets ``RANK`` and ``WORLD_SIZE``)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def timeout_s() -> float:
    """The collective timeout in seconds: ``$AKD_EDGE_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    text = os.environ.get(ENV_TIMEOUT, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{ENV_TIMEOUT}={text!r}: expected a number of seconds > 0")
    return value


def is_comm_error(err: BaseException) -> bool:
    """Whether ``err`` came from the communication backend (a peer gone, a timeout) rather than from the model."""
    import torch.distributed as dist

    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(tag in text for tag in ("gloo", "NCCL", "ProcessGroup", "c10d"))


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__)[:300]


@dataclass(frozen=True)
class Group:
    """This process's place in the default process group, and the few collectives akd-edge needs.

    Every collective must be reached by every rank in the same order; the training loop and the evaluation
    engine call them at points that depend only on the data (batch counts), never on timing.
    """

    rank: int
    world: int
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and shows progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: a CUDA device without an index becomes ``cuda:LOCAL_RANK``."""
        if device.type != "cuda" or device.index is not None:
            if device.type == "cuda" and _local_world() > 1:
                raise ConfigError(
                    f"run.device={str(device)!r}: under torchrun every rank takes the GPU of its LOCAL_RANK; "
                    "use run.device = 'cuda' or 'auto' (or --device cuda)"
                )
            return device
        count = torch.cuda.device_count()
        if self.local_rank >= count:
            raise ConfigError(
                f"LOCAL_RANK {self.local_rank} has no GPU: this node has {count}; start at most {count} processes "
                "per node (torchrun --nproc_per_node)"
            )
        return torch.device("cuda", self.local_rank)

    # -- collectives --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Turn a communication error raised in the block (here or in DDP's gradient all-reduce) into PeerLost."""
        try:
            yield
        except (RuntimeError, ValueError) as err:
            if is_comm_error(err):
                raise PeerLost(self.rank, _first_line(err)) from err
            raise

    def _tensor_device(self) -> torch.device:
        """CPU when the group has a CPU backend (gloo), else this rank's GPU (an NCCL-only group)."""
        import torch.distributed as dist

        backend = str(dist.get_backend())
        if "gloo" in backend or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", torch.cuda.current_device())

    def sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum of ``values`` over all ranks (float64)."""
        import torch.distributed as dist

        tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._tensor_device())
        with self.watch():
            dist.all_reduce(tensor)
        return tensor.tolist()

    def max_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` replaced, in place, by its element-wise maximum over all ranks; returns it."""
        import torch.distributed as dist

        work = tensor.to(self._tensor_device(), torch.int32)
        with self.watch():
            dist.all_reduce(work, op=dist.ReduceOp.MAX)
        tensor.copy_(work.to(tensor.device, tensor.dtype))
        return tensor

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        with self.watch():
            dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` (picklable) on every rank."""
        import torch.distributed as dist

        box = [obj]
        with self.watch():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def from_main(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn``; every rank returns its result, or raises the UsageError it raised.

        For what rank 0 alone decides (claiming a folder, reading and checking a checkpoint): a refusal stops
        every rank with the same message, instead of leaving the others waiting in their next collective.
        """
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except UsageError as err:
                outcome = ("error", (type(err), str(err)))
                self.broadcast(outcome)
                raise
        kind, value = self.broadcast(outcome)
        if kind == "error":
            error_type, message = value
            try:
                error = error_type(message)
            except TypeError:  # a subclass with another signature: the message is what matters
                error = UsageError(message)
            raise error
        return value

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) copied into every rank's ``module``."""
        self._broadcast_tensors(list(module.buffers()))

    def sync_weights(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers copied into every rank's ``module`` (of the same shapes)."""
        with torch.no_grad():
            self._broadcast_tensors([*module.parameters(), *module.buffers()])

    def _broadcast_tensors(self, tensors: list[torch.Tensor]) -> None:
        import torch.distributed as dist

        with self.watch():
            for tensor in tensors:
                dist.broadcast(tensor, src=0)

    # -- the word that a rank failed ------------------------------------------------------------------------
    def post_error(self, message: str) -> None:
        """Leave this rank's error message where the other ranks can read it (torchrun's key-value store)."""
        store = _store()
        if store is not None:
            with contextlib.suppress(Exception):
                store.set(f"{_ERROR_KEY}{self.rank}", message)

    def posted_errors(self, wait_for: int | None = None, wait_s: float = 0.0) -> dict[int, str]:
        """Errors other ranks posted; waits up to ``wait_s`` seconds for rank ``wait_for``'s to appear."""
        store = _store()
        if store is None:
            return {}
        deadline = time.monotonic() + wait_s
        while True:
            found: dict[int, str] = {}
            for rank in range(self.world):
                key = f"{_ERROR_KEY}{rank}"
                with contextlib.suppress(Exception):
                    if rank != self.rank and store.check([key]):
                        found[rank] = store.get(key).decode("utf-8", errors="replace")
            if wait_for is None or wait_for in found or time.monotonic() >= deadline:
                return found
            time.sleep(0.05)


def _local_world() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)


def _store() -> Any:
    """The default group's key-value store (torchrun's), or None."""
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        return _get_default_store()
    except Exception:  # noqa: BLE001 - no group, or a PyTorch without the helper: nothing to post to
        return None


def current() -> Group | None:
    """The :class:`Group` of this process when a default process group is initialised, else None."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    rank = dist.get_rank()
    return Group(rank=rank, world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", rank)))


def rank_device(name: str, group: Group | None = None) -> torch.device:
    """The device ``name`` (``auto``, ``cpu``, ``cuda``...) names for this process: in a data-parallel run
    (``group``) a CUDA device without an index is the rank's own (:meth:`Group.device`)."""
    from akd_edge.core.env import resolve_device

    device = resolve_device(name)
    return device if group is None else group.device(device)


def join(timeout: float | None = None) -> Group:
    """Join the process group torchrun set up (``env://``); :func:`leave` it at the end of the command.

    Backends: gloo for CPU tensors, and NCCL for CUDA tensors where CUDA is available (each rank on the GPU of
    its ``LOCAL_RANK``). Process-wide: for the command-line entry points, not for library code (a library user
    under torchrun calls ``torch.distributed.init_process_group`` as usual). A failure to join is
    :class:`PeerLost`.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed: it cannot run under torchrun")
    seconds = timeout_s() if timeout is None else timeout
    rank = int(os.environ.get("RANK", "0"))
    backend = "gloo"
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local < torch.cuda.device_count():
            torch.cuda.set_device(local)
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=seconds))
    except (RuntimeError, ValueError) as err:
        raise PeerLost(rank, f"could not join the process group: {_first_line(err)}") from err
    group = current()
    assert group is not None
    log.debug("rank %d of %d joined the process group (%s)", group.rank, group.world, backend)
    return group


def leave() -> None:
    """Leave the process group (after a clean end; a failed rank exits instead, a broken group may not close)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
