"""User-facing errors: anything a user can cause ends as one clear line and exit code 2."""

from __future__ import annotations


class PeftkitError(Exception):
    """An error caused by user input (config, data, checkpoint). The CLI prints it on one line, exits 2."""


class ConfigError(PeftkitError, ValueError):
    """A config value or key is wrong."""


class CheckpointError(PeftkitError):
    """A checkpoint is corrupt or was made for another backbone or method stack."""


class DataError(PeftkitError):
    """A data file is missing, empty or malformed."""


class UnsupportedError(PeftkitError):
    """A backbone, family or method combination is not supported."""
