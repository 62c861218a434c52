"""Writing a file whole or not at all: a temporary file in the same folder, renamed over the target.

A reader sees the old file or the new one, never half of one. The temporary is a hidden name
(`.<name>.tmp-<pid>-<random>`, created exclusively, so two processes writing one file never
share a temporary), removed on any failure, KeyboardInterrupt included; the new file gets the
mode any new file gets (0666 less the umask), like a file opened for writing.

    write_text_atomic(path, text)         write_bytes_atomic(path, data)
    with atomic_path(path) as tmp:        # for writers that want a file name (safetensors, a compiler)
        save_file(tensors, str(tmp))

Errors are the OSError of the step that failed; callers turn them into their own one-line
messages. Nothing here creates the folder, or flushes to the disk (fsync): no writer needed it.
Directory renames (a pack's staging folder, a replaced run) are their owners' business.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"  # in every temporary's name: `.<name>.tmp-<pid>-<random>`


def _create_temp(path: Path) -> Path:
    """A new empty file next to `path` with a name no other writer holds (O_EXCL), mode 0666 less the umask."""
    while True:
        tmp = path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside `path` to write to; renamed to `path` when the block ends without
    an exception, removed when it raises (whatever the exception)."""
    path = Path(path)
    tmp = _create_temp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data` (module docstring); OSError when the folder or the disk refuses it."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` in UTF-8 (module docstring); OSError when the folder or the disk refuses it."""
    write_bytes_atomic(path, text.encode("utf-8"))


def leftover_temps(folder: Path) -> list[Path]:
    """Temporaries a killed writer left in `folder` (a process killed outright removes nothing)."""
    return sorted(p for p in folder.glob(f".*{TEMP_MARK}*") if p.is_file())
