"""Commands launched by torchrun: one process group per command, output from rank 0, one message when a rank fails.

:func:`distributed_command` wraps ``train-teacher``, ``distill``, ``compress`` and ``eval``. Started normally they
run as before. Under torchrun (``RANK`` and ``WORLD_SIZE`` set) the wrapper joins the process group for the
command, silences the console of ranks other than 0, and turns failures into one line each:

- a user mistake (exit 2) is printed by rank 0; another rank prints its own only when rank 0 did not fail too
  (a file missing on one node), so a bad recipe reads once, not once per rank;
- a rank that loses the others (one died, or did not answer within ``$AKD_EDGE_DIST_TIMEOUT`` seconds) or is
  stopped by SIGTERM prints what happened and exits :data:`EXIT_PEER_LOST`, unless a rank already reported a
  user mistake (then it exits 2 quietly).

torchrun then prints its own summary of the failed ranks (and exits 1); the line above it is akd-edge's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import click
from rich.markup import escape

from akd_edge.cli.common import console, out
from akd_edge.core.errors import UsageError

EXIT_PEER_LOST = 4
"""Exit status of a rank that stopped because another rank failed or the job was stopped."""
_WAIT_FOR_RANK0_S = 10.0
"""How long a rank with a user error waits to see whether rank 0 reports the same failure."""


class Terminated(Exception):
    """SIGTERM outside a training loop: torchrun stops the other ranks when one fails, schedulers on cancel."""


@contextlib.contextmanager
def _rank0_output(is_main: bool) -> Iterator[None]:
    """Consoles (progress, tables, logs) quiet on ranks other than 0 for the block."""
    saved = console.quiet, out.quiet
    if not is_main:
        console.quiet = out.quiet = True
    try:
        yield
    finally:
        console.quiet, out.quiet = saved


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` (a training loop installs its own handler: save, then stop)."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        raise Terminated("stopped by SIGTERM: another rank failed, or the job was stopped")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _say(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)


def distributed_command(func: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``func`` in the torchrun process group when launched by torchrun (see the module docstring).

    Place it under :func:`akd_edge.cli.common.user_errors`, which prints the user errors it lets through.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from akd_edge.core import distributed

        if not distributed.launched():
            return func(*args, **kwargs)
        try:
            group = distributed.join()
        except distributed.PeerLost as err:
            _say(str(err))
            raise click.exceptions.Exit(EXIT_PEER_LOST) from None
        except UsageError:
            if os.environ.get("RANK", "0") != "0":
                raise click.exceptions.Exit(2) from None  # the same mistake on every rank: rank 0 says it
            raise
        try:
            with _rank0_output(group.is_main), _sigterm_raises():
                result = func(*args, **kwargs)
        except UsageError as err:
            group.post_error(str(err))
            if group.is_main:
                raise
            if 0 in group.posted_errors(wait_for=0, wait_s=_WAIT_FOR_RANK0_S):
                raise click.exceptions.Exit(2) from None  # rank 0 has said it
            raise UsageError(f"rank {group.rank}: {err}") from None
        except (distributed.PeerLost, Terminated) as err:
            if group.posted_errors():
                raise click.exceptions.Exit(2) from None  # the rank that failed has said why
            _say(str(err) if isinstance(err, distributed.PeerLost) else f"rank {group.rank}: {err}")
            raise click.exceptions.Exit(EXIT_PEER_LOST) from None
        distributed.leave()
        return result

    return wrapper
