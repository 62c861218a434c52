"""Errors a user can cause. The CLI prints them as one line and exits with `exit_code`."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class CnnError(Exception):
    """A problem with the user's input: printed without a traceback."""

    exit_code = 2


class ConfigError(CnnError):
    """Bad YAML, unknown key, wrong type or value."""


class ModelError(CnnError):
    """Unknown model name, bad option, input too small."""


class DataError(CnnError):
    """Missing or malformed dataset."""


class CheckpointError(CnnError):
    """Missing, incomplete or mismatched checkpoint."""


class RunDirError(CnnError):
    """A run directory that would be overwritten, or that is not a run."""


class TrainingError(CnnError):
    """Training stopped on a condition it cannot continue from (e.g. NaN loss)."""

    exit_code = 3


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean: a, b?)' for the closest choices, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close) + "?)"


class TrainingInterrupted(CnnError):
    """Ctrl-C / SIGTERM / SIGHUP: a checkpoint was written; exit 128 + the signal (130, 143, 129)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


class WriteError(CnnError):
    """A file could not be written (disk full, read-only filesystem, no permission): what, where, why."""
