"""Errors a user can act on.

Every error raised because of bad *input* (a file, a flag, a checkpoint) is a
:class:`Psg4dError`; the CLI prints its message and exits with status 2 instead
of showing a traceback. Messages name the file (or video) and the problem.
"""

from __future__ import annotations

from pathlib import Path


class Psg4dError(Exception):
    """Base class for user-facing errors (bad input, bad config)."""


class DataError(Psg4dError):
    """A data file is missing, malformed or inconsistent.

    ``where`` is the file path (or a video id); ``field`` optionally names the
    offending JSON field, so the message reads ``path: field: problem``.
    """

    def __init__(self, where: str | Path | None, problem: str, *, field: str | None = None):
        self.where = str(where) if where is not None else None
        self.field = field
        self.problem = problem
        parts = [p for p in (self.where, field) if p]
        super().__init__(": ".join(parts + [problem]))


class ConfigError(Psg4dError):
    """A config file or override is invalid."""


class CheckpointError(Psg4dError):
    """A checkpoint folder is missing, incomplete or of the wrong kind."""
