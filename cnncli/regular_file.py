"""Reading a file a user named, or one inside a run directory, without hanging on what is not a file.

Opening a FIFO for reading waits until something opens it for writing -- forever, if nothing
does -- and a character device (/dev/zero, /dev/urandom) never ends. So every path that cnn
reads as a whole (a config, a run's status.json, metrics or config.yaml, an image) goes through
here: opened with O_NONBLOCK (a FIFO's open returns at once instead of waiting), then checked with
fstat on the descriptor itself (no race between the check and the open), and refused in one
line unless it is a regular file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from cnncli.errors import CnnError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def kind(mode: int) -> str:
    """What a non-regular file is, in words."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def not_regular(path: str | Path) -> str | None:
    """None if `path` is a regular file (following links) or does not exist; else what it is, in words."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) else kind(mode)


def check(path: str | Path, error: type[CnnError] = CnnError, what: str = "") -> None:
    """Refuse `path` in one line (`error`) if it exists and is not a regular file."""
    found = not_regular(path)
    if found is not None:
        raise error(f"{what + ' ' if what else ''}{path} is {found}, not a regular file")


def open_binary(path: str | Path, error: type[CnnError] = CnnError, what: str = "") -> BinaryIO:
    """The regular file `path` opened for reading in binary; one line (`error`) if it is anything else
    (a FIFO refused at once, without waiting for a writer). OSError (missing, no permission) passes through."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what + ' ' if what else ''}{path} is {kind(mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, error: type[CnnError] = CnnError, what: str = "", limit: int | None = None) -> bytes:
    """The bytes of the regular file `path` (at most `limit` + 1 of them when `limit` is given); one line
    (`error`) if it is anything else. OSError (missing, no permission) passes through."""
    with open_binary(path, error, what) as fh:
        return fh.read() if limit is None else fh.read(limit + 1)


def read_text(path: str | Path, error: type[CnnError] = CnnError, what: str = "") -> str:
    """`read_bytes` decoded as UTF-8 (UnicodeDecodeError passes through)."""
    return read_bytes(path, error, what).decode("utf-8")
