"""Errors a user can cause. Each carries one sentence saying what was wrong and how to fix it.

The CLI prints `error: <sentence>` and exits non-zero; library callers can catch `StratalmError`.
"""


class StratalmError(Exception):
    """Base class of every error caused by input, configuration or files (never by a bug)."""


class ConfigError(StratalmError):
    """An unknown preset, config key, or a value of the wrong type."""


class DataError(StratalmError):
    """Missing, empty, binary or badly encoded input data."""


class CheckpointError(StratalmError):
    """A missing, corrupt, incomplete or mismatched checkpoint."""


class OutputExistsError(StratalmError):
    """An output folder already holds a different run."""


class InputTooLongError(StratalmError):
    """A sequence longer than the model's context."""
