"""Exceptions raised by exemplar_vae for bad user input.

Every error a user can cause (a bad config value, a missing or corrupt data file, an unreadable
checkpoint) is an :class:`ExemplarVAEError`. The CLI catches this base class, prints
``error: <message>`` and exits with code 2 -- or 1 for :class:`RunFailed`, a run that started and
failed (e.g. training diverged) -- so messages must name the offending value and say how to fix it.
Internal invariants use ``assert`` instead.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DataError", "ExemplarVAEError", "RunFailed"]


class ExemplarVAEError(Exception):
    """Base class; the CLI turns these into 'error: ...' and exit code 2."""


class ConfigError(ExemplarVAEError, ValueError):
    """An invalid configuration value or argument (unknown name, out-of-range number)."""


class DataError(ExemplarVAEError, ValueError):
    """A data file is missing, unreadable, corrupt, or holds values of the wrong shape or range."""


class CheckpointError(ExemplarVAEError):
    """A checkpoint is missing, unreadable, or does not match the model it is loaded into."""


class RunFailed(ExemplarVAEError):
    """A run that started failed on its own (e.g. the loss diverged); the CLI exits with code 1."""
