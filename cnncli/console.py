"""The console every command prints through: rich's, with one change, what happens when its reader goes.

A pipe's reader that ends early (`cnn runs | head`, `cnn train 2>&1 | head`, a log collector that
dies) makes the next write fail with EPIPE. rich's own answer is to exit 1 with standard output
pointed at /dev/null, whichever stream broke. Here the broken stream itself (and standard output too
where both are the one pipe) is pointed at /dev/null, so that no later write, from rich or not, fails
again; then the console calls its `on_reader_gone` where one is set (`cnn train` finishes its step,
checkpoints and stops, as on a signal) and otherwise ends the command as SIGPIPE would, exit 141.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from typing import Callable

from rich.console import Console as RichConsole

EXIT_READER_GONE = 128 + getattr(signal, "SIGPIPE", 13)


class Console(RichConsole):
    on_reader_gone: Callable[[], None] | None = None

    def on_broken_pipe(self) -> None:
        self.quiet = True
        silence(self.file)
        if self.on_reader_gone is not None:
            self.on_reader_gone()
            return
        raise SystemExit(EXIT_READER_GONE)


def silence(stream) -> None:
    """Point `stream`'s file descriptor at /dev/null, and standard output's and error's where they are the
    same pipe or file; a stream with no descriptor (a test's StringIO) is left as it is."""
    try:
        fd = stream.fileno()
        broken = os.fstat(fd)
    except (AttributeError, OSError, ValueError):
        return
    fds = {fd}
    for std in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            other = os.fstat(std.fileno())
            if (other.st_dev, other.st_ino) == (broken.st_dev, broken.st_ino):
                fds.add(std.fileno())
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for f in fds:
            os.dup2(null, f)
    finally:
        os.close(null)


def readers_gone() -> list:
    """Standard output and error, those of them that are pipes whose reader has gone (a write would fail
    with EPIPE): on Linux and macOS poll() says POLLERR for such a pipe's write end."""
    gone = []
    for std in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            poller = select.poll()
            poller.register(std.fileno(), select.POLLOUT)
            if any(events & select.POLLERR for _, events in poller.poll(0)):
                gone.append(std)
    return gone


def stderr_console() -> Console:
    return Console(stderr=True, soft_wrap=True)
