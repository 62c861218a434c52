"""Who owns a run directory: one process at a time, through an OS lock on its `.lock` file.

A writer takes `fcntl.flock` on `<run>/.lock` and keeps it for the life of the process. The kernel
drops the lock when the process dies, however it dies, so a stale `.lock` file never blocks a
resume. Within one process the lock is re-entrant (held per resolved path), so in-process callers
that open the same run twice do not refuse themselves. The file holds the owner's pid and host, so
that a refusal can name who holds the run.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from cnncli.errors import RunDirError

LOCK = ".lock"
_HELD: dict[Path, int] = {}  # resolved run path -> fd of its flocked .lock file, for this process


def holds(path: Path) -> bool:
    """Whether this process owns the run at `path`."""
    return path.resolve() in _HELD


def acquire(path: Path) -> None:
    """Own the run at `path` for the life of the process; a one-line RunDirError naming the live owner
    otherwise."""
    import fcntl

    key = path.resolve()
    if key in _HELD:
        return
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RunDirError(f"cannot lock run directory {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = _read_owner(fd)
        os.close(fd)
        raise in_use(path, owner) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode() + b"\n", 0)
    except OSError as exc:
        os.close(fd)
        raise RunDirError(f"cannot lock run directory {path}: {exc.strerror or exc}") from None
    _HELD[key] = fd


def release(path: Path) -> None:
    """Give up ownership of the run at `path` (the kernel also does this when the process ends)."""
    fd = _HELD.pop(path.resolve(), None)
    if fd is not None:
        os.close(fd)  # closing the descriptor drops the flock


def owner(path: Path) -> dict | None:
    """{'pid', 'host'} of the live process owning the run at `path`, or None if nobody holds the lock."""
    import fcntl

    if holds(path):
        return {"pid": os.getpid(), "host": socket.gethostname()}
    try:
        fd = os.open(path / LOCK, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO there must not block
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_owner(fd) or {"pid": None, "host": None}
    finally:
        os.close(fd)
    return None


def in_use(path: Path, who: dict | None) -> RunDirError:
    """The refusal of a run that a live process owns."""
    name = f"process {who.get('pid')} on host {who.get('host')}" if who and who.get("pid") else "another process"
    return RunDirError(f"run directory {path} is in use by {name}; wait for it to finish or stop it first")


def _read_owner(fd: int) -> dict | None:
    try:
        found = json.loads(os.pread(fd, 4096, 0).decode())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
