"""The large-block cache (large_blocks.c), built on first use for the `cnn` command to preload.

`library()` gives the path of the compiled cache, or None where it cannot be had: not Linux,
no C compiler, a failed build, no writable cache (cnncli/native/cache.py). Then `cnn` runs with glibc's allocator
alone, as before.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from cnncli.native.build import BuildError, built_library

SOURCE = Path(__file__).with_name("large_blocks.c")
FILE_PREFIX = "large-blocks"


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def library() -> Path | None:
    """The compiled large-block cache, built now if no intact one is cached; None if it cannot be."""
    compiler = _compiler()
    if sys.platform != "linux" or not compiler:
        return None
    cmd = [compiler, "-O2", "-shared", "-fPIC", "-w", str(SOURCE), "-ldl", "-lpthread"]
    try:
        with built_library("malloc", FILE_PREFIX, [SOURCE.read_text(), compiler], cmd, "the large-block cache",
                           temporary=False) as path:  # preloaded by a later process: in the cache or not at all
            return path
    except (BuildError, OSError):
        return None
