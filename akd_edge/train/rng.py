"""The run's own random stream: seeded from ``run.seed``, kept apart from the caller's global RNG state (which
is put back), saved in every checkpoint and continued on resume, per rank in a data-parallel run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from akd_edge.train.parallel import rank_seed

if TYPE_CHECKING:
    from akd_edge.core.distributed import Group

log = logging.getLogger(__name__)


def rng_state(cuda: bool) -> dict[str, Any]:
    """torch's global RNG state: the CPU's and, with ``cuda``, every CUDA device's."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Put back a state of :func:`rng_state` or :meth:`RunRng.now`."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


class RunRng:
    """The random numbers of one run (initialisation, attack starts) on ``device``, in rank ``group.rank``'s
    stream when a process group is joined."""

    def __init__(self, device: torch.device, group: Group | None) -> None:
        self.device = device
        self.group = group
        self.state: dict[str, Any] = {}
        """The run's stream while the caller's global state is in place (set by :meth:`seeded`)."""

    def now(self) -> dict[str, Any]:
        """The global RNG state: CPU and, on CUDA, every device's (one process) or this rank's device's only."""
        if self.group is None:
            return rng_state(self.device.type == "cuda")
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_device"] = torch.cuda.get_rng_state(self.device)
        return state

    @contextlib.contextmanager
    def seeded(self, seed: int, rank_stream: int | None = None) -> Iterator[None]:
        """Build the run inside: the global RNG seeded from ``seed``, so every rank builds the same model.

        Afterwards the stream is the run's (a rank other than 0 goes on from ``rank_stream``, its own stream of
        attack starts) and the caller's global state is put back.
        """
        outer = self.now()
        try:
            torch.manual_seed(seed)
            yield
            if rank_stream is not None:
                torch.manual_seed(rank_stream)
            self.state = self.now()
        finally:
            set_rng_state(outer, self.device)

    @contextlib.contextmanager
    def own(self) -> Iterator[None]:
        """Draw random numbers from this run's stream inside, not from the caller's; the stream goes on after."""
        outer = self.now()
        set_rng_state(self.state, self.device)
        try:
            yield
        finally:
            self.state = self.now()
            set_rng_state(outer, self.device)

    def for_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The checkpoint's ``rng`` entry, and in a data-parallel run its ``rng_ranks`` (every rank's state) and
        ``world_size`` entries; inside :meth:`own`. Every rank must call it: it gathers their states."""
        if self.group is not None:
            ranks = self.group.all_gather(self.now())
            return {"torch": ranks[0]["torch"]}, {"rng_ranks": ranks, "world_size": self.group.world}
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng, {}

    def resume(self, ckpt: dict[str, Any], seed: int) -> None:
        """The random stream(s) where the checkpoint left them; inside :meth:`own`.

        A data-parallel resume with the world size that saved the checkpoint gives each rank its own state back;
        with another world size rank 0 continues the saved (rank 0's) stream and the others start fresh ones.
        """
        if self.group is None:
            torch.set_rng_state(ckpt["rng"]["torch"])
            if "cuda" in ckpt["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
            return
        ranks = ckpt.get("rng_ranks") or []
        if len(ranks) == self.group.world:
            set_rng_state(ranks[self.group.rank], self.device)
        elif self.group.is_main:
            torch.set_rng_state(ckpt["rng"]["torch"])
        else:
            torch.manual_seed(rank_seed(seed, self.group.rank, ckpt["epoch"], ckpt["batch"]))
        if len(ranks) not in (0, self.group.world) and self.group.is_main:
            log.info(
                "resuming with %d ranks a checkpoint saved by %d: the data order is the same, the ranks' random "
                "attack starts are new draws",
                self.group.world,
                len(ranks),
            )
