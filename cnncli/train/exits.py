"""How a run ends: signals caught between steps, failures as one line, write errors named.

`SignalCatcher` lets the loop finish its step and checkpoint on the first SIGINT/SIGTERM/SIGHUP
(a closed terminal or ssh session sends SIGHUP: the commonest way a long run ends unexpectedly), and
when the console's reader goes away (a broken pipe: stopped as on SIGPIPE);
`says_how_it_ended` covers a new run from its creation to the loop's own handling;
`cnncli.errors.one_line(exc, typed=True)` is what status.json and the console say about any exception; `write_error` turns
a full disk or a read-only filesystem into a one-line WriteError naming the last complete
checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import TYPE_CHECKING

from cnncli import errors, interrupts
from cnncli.errors import TrainingInterrupted, WriteError
from cnncli.rundir import RunDir

if TYPE_CHECKING:
    from cnncli.config import Config


class SignalCatcher:
    """Remembers SIGINT/SIGTERM/SIGHUP so that the loop can finish its step and checkpoint.

    While `urgent` (outside the step loop: final evaluation, export), a signal raises at once.
    A second signal while the first is being handled also raises at once.

    Under several processes (`shared`) the processes must stop at the same step, or the one
    checkpointing waits forever for the others. There SIGTERM is left to jax's preemption
    service, which tells every process of the cluster, and SIGINT and SIGHUP are passed on to it
    as a SIGTERM; `stop_requested(step)` is true on every process at the one step the service agrees
    on (jax.experimental.multihost_utils.reached_preemption_sync_point).
    """

    def __init__(self):
        self.signum: int | None = None
        self.urgent = False
        self.raised = False
        self.shared = False
        self._local: int | None = None  # shared: the signal this process received, if any

    @contextlib.contextmanager
    def installed(self, shared: bool = False):
        self.shared = shared and _preemption_service()
        previous = {}
        caught = (signal.SIGINT, signal.SIGHUP) if self.shared else (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        try:
            for s in caught:
                if s != signal.SIGHUP or signal.getsignal(s) is not signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                    previous[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread: no handlers, no graceful stop
            previous = {}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def _handle(self, signum, frame):
        interrupts.taken()  # this loop stops on it (an interrupt dropped before the loop began is sent again)
        if self.raised:  # already stopping: let the clean-up finish and say so
            return
        if self.shared and not self.urgent:
            if self._local is None:
                self._local = signum
                os.kill(os.getpid(), signal.SIGTERM)  # to jax's preemption service, which tells the others
                return
            self.raised = True  # a second one: this process stops now, the others see it fail
            raise TrainingInterrupted(f"{signal.Signals(signum).name} again: stopped", signum)
        first = self.signum is None
        self.signum = signum
        if self.urgent or not first:
            self.raised = True
            raise TrainingInterrupted(f"{signal.Signals(signum).name}: stopped", signum)

    def reader_gone(self) -> None:
        """The console's reader went away (`cnn train 2>&1 | head`, a log pipe whose reader died): the loop
        stops as on SIGPIPE, after its step, with a checkpoint, and the run says "interrupted". Once no
        step is left (final evaluation, export) the run finishes instead: only its last lines are lost.
        Called from whichever thread wrote (cnncli.console); it never raises."""
        if self.urgent or self.signum is not None or self._local is not None:
            return
        if self.shared:  # every process must stop at one step: through jax's preemption service
            self._local = signal.SIGPIPE
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.signum = signal.SIGPIPE

    def stop_requested(self, step: int) -> bool:
        """Whether the loop should checkpoint and stop after `step` (called after every step, by every
        process when shared)."""
        if self.shared and self.signum is None:
            from jax.experimental import multihost_utils

            if multihost_utils.reached_preemption_sync_point(step):
                self.signum = self._local or signal.SIGTERM
        return self.signum is not None


def _preemption_service() -> bool:
    """Whether this process is part of a cluster whose jax preemption service is running."""
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover - a jax without it: each process stops on its own
        return False
    state = distributed.global_state
    return state.client is not None and getattr(state, "preemption_sync_manager", None) is not None


def write_error(exc: OSError, run: RunDir, last_good: int | None) -> WriteError:
    where = exc.filename or run.path
    good = f"the last complete checkpoint is {run.checkpoints / str(last_good)} (intact)" if last_good is not None \
        else "no checkpoint is complete"
    return WriteError(f"could not write {where}: {os.strerror(exc.errno) if exc.errno else exc}; {good}")


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EFBIG}


@contextlib.contextmanager
def says_how_it_ended(run: RunDir):
    """A new run that ends before its loop claimed it (status "running") still says how it ended; one that
    was to replace an old run (--force) puts the old run back instead."""
    try:
        yield
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            interrupts.taken()
        if run.replaced is not None:
            run.restore_replaced()
        elif not (run.path / "status.json").exists():
            how = "interrupted" if isinstance(exc, (KeyboardInterrupt, TrainingInterrupted)) else "failed"
            reason = f"{signal_name(exc)}: stopped" if isinstance(exc, KeyboardInterrupt) else errors.one_line(exc, typed=True)
            with contextlib.suppress(Exception):
                run.set_status(how, reason=reason, step=None)
        raise


def comparable(cfg: Config) -> str:
    """The config as text that every process of one run must share (the `distributed` section may name
    each process's own id)."""
    import json

    import yaml

    raw = yaml.safe_load(cfg.to_yaml())
    raw.pop("distributed", None)
    return json.dumps(raw, sort_keys=True, default=str)


def signal_name(exc: BaseException) -> str:
    return signal.Signals(getattr(exc, "signum", signal.SIGINT)).name
