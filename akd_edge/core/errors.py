"""Errors that mean the user asked for something wrong; the CLI turns them into exit code 2."""


class UsageError(Exception):
    """A user mistake (bad recipe, missing file, wrong shape): the message says what and how to fix it."""


class ConfigError(UsageError):
    """A recipe or override is invalid; the message names the key."""


class DataError(UsageError):
    """A dataset is missing or malformed; the message lists where it looked and how to get it."""


class CheckpointError(UsageError):
    """A checkpoint or run directory is missing, corrupt or not an akd-edge checkpoint."""
