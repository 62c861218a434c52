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


def one_line(exc: BaseException, *, typed: bool = False, limit: int = 300) -> str:
    """An exception as one short line for a message that names its own context.

    The first non-blank line of its text; an OSError's reason alone ("No space left on device",
    without the errno and the file name, which the caller's message names); the type's name where
    there is no text. `typed`: prefixed with the type's name ("ValueError: ..."), for an exception
    nothing expected -- except a CnnError, whose text is already the user's message. At most
    `limit` characters."""
    if isinstance(exc, OSError) and exc.strerror and not typed:
        text = exc.strerror
    else:
        text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if typed and not isinstance(exc, CnnError):
        text = f"{type(exc).__name__}: {text}" if text else ""
    return (text or type(exc).__name__)[:limit]
