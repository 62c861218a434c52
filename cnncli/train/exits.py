"""How a run ends: signals caught between steps, failures as one line, write errors named.

`SignalCatcher` lets the loop finish its step and checkpoint on the first SIGINT/SIGTERM;
`one_line` is what status.json and the console say about any exception; `write_error` turns
a full disk or a read-only filesystem into a one-line WriteError naming the last complete
checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal

from cnncli.errors import CnnError, TrainingInterrupted, WriteError
from cnncli.rundir import RunDir


class SignalCatcher:
    """Remembers SIGINT/SIGTERM so that the loop can finish its step and checkpoint.

    While `urgent` (outside the step loop: final evaluation, export), a signal raises at once.
    A second signal while the first is being handled also raises at once.
    """

    def __init__(self):
        self.signum: int | None = None
        self.urgent = False
        self.raised = False

    @contextlib.contextmanager
    def installed(self):
        previous = {}
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no handlers, no graceful stop
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _handle(self, signum, frame):
        if self.raised:  # already stopping: let the clean-up finish and say so
            return
        first = self.signum is None
        self.signum = signum
        if self.urgent or not first:
            self.raised = True
            raise TrainingInterrupted(f"{signal.Signals(signum).name}: stopped", signum)


def one_line(exc: BaseException) -> str:
    """An exception as one short line for status.json and the console."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if not isinstance(exc, CnnError) else text[:300]


def write_error(exc: OSError, run: RunDir, last_good: int | None) -> WriteError:
    where = exc.filename or run.path
    good = f"the last complete checkpoint is {run.checkpoints / str(last_good)}" if last_good is not None \
        else "no checkpoint was complete yet"
    return WriteError(f"could not write {where}: {os.strerror(exc.errno) if exc.errno else exc}; {good}")


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EFBIG}
