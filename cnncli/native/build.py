"""Compile a library once into cnn's cache (cache.py: <cache>/<kind>/), atomically, sealed against damage.

A library is named by a hash of everything it is built from, so an upgrade builds a new one.
The build writes a temporary file and renames it into place (a concurrent process sees the old
file or the whole new one), then writes its SHA-256 beside it: a library that does not match
its seal (a disk filled or a file cut short since) is built again, never loaded, since loading
a damaged one can crash the process. Failures are BuildError with one line to show.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cnncli.atomic import atomic_path, write_text_atomic
from cnncli.native.cache import cache_dir


class BuildError(Exception):
    """Why a library could not be built (one line)."""


def _seal(library: Path) -> Path:
    return library.with_suffix(".sha256")


def intact(library: Path) -> bool:
    """Whether `library` is whole, as its build left it."""
    try:
        return hashlib.sha256(library.read_bytes()).hexdigest() == _seal(library).read_text().strip()
    except OSError:
        return False


def _compile_sealed(cmd: list[str], out: Path, what: str) -> None:
    """Run `cmd` + ["-o", <temporary>] and move the result to `out`; OSError if `out`'s folder
    cannot be written, BuildError if the compiler fails or hangs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        try:
            proc = subprocess.run([*cmd, "-o", str(tmp)], check=False, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise BuildError(f"building {what} took over 300 s") from None
        except (FileNotFoundError, PermissionError) as e:  # the compiler itself, not the folder
            raise BuildError(f"cannot run the compiler {cmd[0]}: {e.strerror}") from None
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[-1] if lines else "no message")
            raise BuildError(f"building {what} failed: {first.strip()[:300]}")
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    write_text_atomic(_seal(out), digest)


@contextlib.contextmanager
def built_library(kind: str, name: str, key_parts: list[str], cmd: list[str], what: str,
                  announce: Callable[[str], None] = lambda line: None, temporary: bool = True) -> Iterator[Path]:
    """The library `name`-<hash of key_parts>.so, valid inside the block: an intact one from cnn's
    cache, else built now (`announce` gets one line first) into the cache, or, where there is no
    writable cache, into a temporary folder removed when the block ends (a loaded library stays
    mapped; BuildError instead without `temporary`). BuildError when it cannot be built."""
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:16]
    folder = cache_dir(kind)
    path = folder / f"{name}-{key}.so" if folder is not None else None
    if path is not None and intact(path):
        yield path
        return
    if path is None and not temporary:
        raise BuildError(f"no cache folder to build {what} into")
    announce(f"cnn: building {what} with {Path(cmd[0]).name} (a few seconds)")
    if path is not None:
        try:
            _compile_sealed(cmd, path, what)
        except OSError as e:
            if not temporary:
                raise BuildError(f"cannot build {what}: {e}") from None
            path = None  # an unwritable cache: build for this process alone
    if path is not None:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=f"cnn-{kind}-") as tmp:
        path = Path(tmp) / f"{name}-{key}.so"
        try:
            _compile_sealed(cmd, path, what)
        except OSError as e:
            raise BuildError(f"cannot build {what}: {e}") from None
        yield path
