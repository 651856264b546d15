"""User-facing exceptions.

Every error a user can fix (bad path, bad hyper-parameter, mismatched checkpoint) is raised as a
:class:`SabrError` whose message names the problem and the fix. The command-line interface prints
that message as one paragraph and exits non-zero, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class SabrError(Exception):
    """An error caused by the user's input, with a message that says how to fix it."""


class DataError(SabrError):
    """The dataset cannot be read or does not fit the request."""


class CheckpointError(SabrError):
    """A checkpoint or run folder is missing, corrupt or belongs to another model."""


class ConfigError(SabrError):
    """A configuration value is out of range or unknown."""


class StorageError(SabrError):
    """A file of the run folder could not be written (full disk, permissions); the previous version is intact."""


class TrainingError(SabrError):
    """Training cannot go on as configured (e.g. the loss became NaN or infinite)."""
