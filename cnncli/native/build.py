"""Compile a library once into ~/.cache/cnn/<kind>/, atomically, sealed against damage.

A library is named by a hash of everything it is built from, so an upgrade builds a new one.
The build writes a temporary file and renames it into place (a concurrent process sees the old
file or the whole new one), then writes its SHA-256 beside it: a library that does not match
its seal (a disk filled or a file cut short since) is built again, never loaded, since loading
a damaged one can crash the process. Failures are BuildError with one line to show.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path


class BuildError(Exception):
    """Why a library could not be built (one line)."""


def _cache_dir(kind: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnn" / kind


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
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        try:
            proc = subprocess.run([*cmd, "-o", tmp], check=False, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            raise BuildError(f"building {what} took over 300 s") from None
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            first = next((ln for ln in lines if "error" in ln), lines[-1] if lines else "no message")
            raise BuildError(f"building {what} failed: {first.strip()[:300]}")
        digest = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
        os.replace(tmp, out)
        _seal(out).write_text(digest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build_cached(kind: str, name: str, key_parts: list[str], cmd: list[str], what: str,
                 temporary_fallback: bool = True) -> Path:
    """The library `name`-<hash of key_parts>.so, built with `cmd` unless an intact one is cached.
    An unwritable cache builds into a private temporary folder instead (left behind: one per
    process), or raises BuildError without `temporary_fallback`."""
    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:16]
    path = _cache_dir(kind) / f"{name}-{key}.so"
    if intact(path):
        return path
    try:
        _compile_sealed(cmd, path, what)
    except OSError as e:
        if not temporary_fallback:
            raise BuildError(f"cannot build {what}: {e}") from None
        path = Path(tempfile.mkdtemp(prefix=f"cnn-{kind}-")) / path.name
        try:
            _compile_sealed(cmd, path, what)
        except OSError:
            raise BuildError(f"cannot build {what}: {e}") from None
    return path
