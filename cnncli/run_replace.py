"""`--force`: replacing a run directory without losing the old run before the new one has started.

The old run's entries move into a hidden `.cnn-replaced-*` folder inside the run directory (renames
within one file system: nothing is copied; the folder itself is never removed, since it may be a
mount point or the working directory). The new run starts; once it has written its files the old
entries are deleted (`discard`); a new run that ends before that puts the old one back (`restore`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from cnncli.errors import RunDirError

REPLACED = ".cnn-replaced"  # + pid and time: the old run while --force starts the new one


def move_aside(path: Path) -> Path:
    """Move every entry of the run directory `path` into a new hidden folder inside it; that folder.
    Refuses, with every entry back in place, if one cannot move."""
    aside = path / f"{REPLACED}-{os.getpid()}-{time.time_ns()}"
    moved: list[str] = []
    try:
        aside.mkdir()
        for entry in sorted(path.iterdir()):
            if entry != aside:
                os.rename(entry, aside / entry.name)
                moved.append(entry.name)
    except OSError as exc:
        for name in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(aside / name, path / name)
        with contextlib.suppress(OSError):
            aside.rmdir()
        raise RunDirError(f"--force could not move the old run in {path} aside: {exc.strerror or exc} "
                          f"({exc.filename or path}); the old run is left as it was") from None
    return aside


def discard(aside: Path) -> None:
    """The new run has written its files: delete the old run."""
    shutil.rmtree(aside, ignore_errors=True)


def restore(path: Path, aside: Path) -> None:
    """The new run ended before it wrote its files: remove what it made in `path` and put the old run
    back from `aside` (the caller has released the new run's lock)."""
    for entry in path.iterdir():
        if entry != aside:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
    for entry in aside.iterdir():
        with contextlib.suppress(OSError):
            os.rename(entry, path / entry.name)
    with contextlib.suppress(OSError):
        aside.rmdir()
