"""How a run stops early: on Ctrl-C after a resumable checkpoint (:class:`Interrupted`), or on a NaN or inf
without saving (:class:`Diverged`); :class:`StopRequest` is the signal handler that the loop polls between
batches."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """Training stopped on Ctrl-C after saving a resumable checkpoint."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"interrupted; resume with --resume {run_dir}")
        self.run_dir = run_dir


class Diverged(Exception):
    """The loss (or a weight) became NaN or inf: training stopped without saving; the last good checkpoint stays.

    The CLI exits with status 3. Resuming would diverge again: start a new run with a lower learning rate or
    gradient clipping.
    """

    def __init__(self, run_dir: Path, what: str, epoch: int, batch: int | str, saved: tuple[int, int] | None) -> None:
        if saved is None:
            kept = "no checkpoint had been saved yet"
        else:
            kept = f"the last good checkpoint, {run_dir / 'last.pt'} (epoch {saved[0]}, batch {saved[1]}), is kept"
        super().__init__(
            f"training diverged: {what} {'batch' if isinstance(batch, int) else 'batches'} {batch} of epoch {epoch}; "
            f"stopped without saving, {kept}. "
            "Start a new run with a lower train.optim.lr or with train.optim.grad_clip set"
        )
        self.run_dir, self.epoch, self.batch = run_dir, epoch, batch


def nonfinite_weight(model: nn.Module) -> str | None:
    """The name of the first floating-point tensor of ``model``'s state that holds a NaN or inf, else None.

    A step can leave non-finite weights even when its own loss was finite: checked before every save.
    """
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


class StopRequest:
    """First Ctrl-C asks the loop to save and stop after the current batch; a second one aborts.

    In a data-parallel run SIGTERM (torchrun or a scheduler stopping the job) asks the same, and a second signal
    does not abort: torchrun passes Ctrl-C on to ranks that the terminal has signalled already.
    """

    def __init__(self) -> None:
        self.requested = False

    @contextlib.contextmanager
    def installed(self, distributed: bool = False) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        signals = (signal.SIGINT, signal.SIGTERM) if distributed else (signal.SIGINT,)
        previous = {signum: signal.getsignal(signum) for signum in signals}

        def handler(signum: int, frame: Any) -> None:
            if self.requested and not distributed:
                raise KeyboardInterrupt
            if not self.requested:
                what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
                again = "" if distributed else " (press again to abort now)"
                log.warning("%s: saving a checkpoint after this batch%s", what, again)
            self.requested = True

        for signum in signals:
            signal.signal(signum, handler)
        try:
            yield
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)
