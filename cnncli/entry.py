"""The `cnn` console script: once, relaunch under glibc's huge-page tunable where it pays; then the CLI.

XLA:CPU allocates each training step's temporary buffers (206 MB for ResNet-20 at batch 128) as
one block that glibc maps fresh from the kernel and unmaps again every step, so the step faults
on every 4 KiB page of it (50,000 faults a step on this project's machine, about a sixth of the
step). With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc asks for transparent huge pages on
such blocks and the kernel faults 2 MiB at a time (about 300 faults a step; the step's time and
the process's memory both measured in benchmarks/RESULTS.md). glibc reads its tunables only when
a process starts, so `cnn` sets the variable and replaces itself with the same command, once
(the same process id, a few tens of ms), when all of these hold:

- Linux with glibc 2.35 or later (the first with the tunable), and the kernel's transparent huge
  pages in `madvise` mode (with `always` there is nothing to gain, with `never` nothing to have);
- the CPU is the platform that will run (cnncli.xla_flags.cpu_will_run);
- neither GLIBC_TUNABLES already names the tunable nor LD_PRELOAD brings another allocator;
- CNN_MALLOC_DEFAULTS is not 0.

Only the `cnn` command does this: a Python program that imports cnn runs with its own allocator.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (ValueError, OSError, AttributeError):
        return None


def _thp_mode() -> str | None:
    try:
        text = _THP_MODE.read_text()
    except OSError:
        return None
    return text[text.index("[") + 1:text.index("]")] if "[" in text else None


def relaunch_argv(environ) -> list[str] | None:
    """The command to relaunch this process with, the tunable added to `environ`; None to go on as is."""
    from cnncli.xla_flags import cpu_will_run

    if environ.get("CNN_MALLOC_DEFAULTS", "1").strip() == "0" or sys.platform != "linux":
        return None
    if "glibc.malloc.hugetlb" in environ.get("GLIBC_TUNABLES", "") or environ.get("LD_PRELOAD"):
        return None
    if (_glibc_version() or (0, 0)) < (2, 35) or _thp_mode() != "madvise" or not cpu_will_run(environ):
        return None
    argv = list(getattr(sys, "orig_argv", []))
    if not argv:
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    environ["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return argv


def main() -> None:
    argv = relaunch_argv(os.environ)
    if argv is not None:
        try:
            os.execv(sys.executable, argv)
        except OSError:
            pass  # go on with glibc's defaults
    from cnncli.cli import main as cli_main

    cli_main()
