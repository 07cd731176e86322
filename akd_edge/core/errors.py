"""Errors that mean the user asked for something wrong; the CLI turns them into exit code 2."""

from collections.abc import Sequence


class UsageError(Exception):
    """A user mistake (bad recipe, missing file, wrong shape): the message says what and how to fix it."""


class ConfigError(UsageError):
    """A recipe or override is invalid; the message names the key."""


class DataError(UsageError):
    """A dataset is missing or malformed; the message lists where it looked and how to get it."""


class CheckpointError(UsageError):
    """A checkpoint or run directory is missing, corrupt or not an akd-edge checkpoint."""


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """The first ``shown`` of ``names`` for a message, and how many more: ``a, b, c, d, e and 3 more`` (or ``none``)."""
    if not names:
        return "none"
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
