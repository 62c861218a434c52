"""The `cnn` console script: once, relaunch with cnn's allocator settings where they pay; then the CLI.

XLA:CPU allocates each training step's temporary buffers as one block (196 MB for ResNet-20 at
batch 128) that glibc maps fresh from the kernel and unmaps again every step, so every step
faults in and zeroes all of it anew: 50,000 faults of 4 KiB a step on this project's machine,
a sixth of the step. Two settings, both read only when a process starts:

- GLIBC_TUNABLES=glibc.malloc.hugetlb=1: glibc asks for transparent huge pages, and the kernel
  faults such blocks 2 MiB at a time (about 480 faults a step). Needs glibc 2.35 or later and
  the kernel's transparent huge pages in `madvise` mode (with `always` there is nothing to gain,
  with `never` nothing to have).
- LD_PRELOAD=<the large-block cache> (cnncli/native/large_blocks.c, built on first use): freed
  blocks of 32 MiB or more stay mapped and are reused, so a step faults about once. The memory
  kept is at most the most that was live at once. Needs glibc and a C compiler.

So `cnn` sets what applies and replaces itself with the same command, once (the same process
id, a few tens of ms), when the CPU is the platform that will run (cnncli.xla_flags.cpu_will_run),
CNN_MALLOC_DEFAULTS is not 0, and the user's environment has not chosen already: the tunable is
left out where GLIBC_TUNABLES names it, and neither is set where LD_PRELOAD brings another
allocator. Only the `cnn` command does this: a Python program that imports cnn runs with its
own allocator. The effect on the step's time and memory is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import signal
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


def _large_block_cache() -> str | None:
    from cnncli.native.large_blocks import library

    path = library()
    return str(path) if path else None


def relaunch_argv(environ) -> list[str] | None:
    """The command to relaunch this process with, cnn's settings added to `environ`; None to go on as is."""
    from cnncli.xla_flags import cpu_will_run

    if environ.get("CNN_MALLOC_DEFAULTS", "1").strip() == "0" or sys.platform != "linux":
        return None
    glibc = _glibc_version()
    if environ.get("LD_PRELOAD") or environ.get("CNN_RELAUNCHED") or glibc is None:
        return None
    argv = list(getattr(sys, "orig_argv", []))
    if not argv or set(sys.argv[1:]) <= {"--help", "-h"} or not cpu_will_run(environ):
        return None  # (help computes nothing: no relaunch to pay for)
    tunable = ("glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")
               and glibc >= (2, 35) and _thp_mode() == "madvise")
    preload = _large_block_cache()
    if not tunable and not preload:
        return None
    if tunable:
        current = environ.get("GLIBC_TUNABLES", "")
        environ["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    if preload:
        environ["LD_PRELOAD"] = preload
    environ["CNN_RELAUNCHED"] = "1"
    return argv


def main() -> None:
    from cnncli import interrupts

    interrupts.install()  # from the first line (the relaunch below starts it again): a signal is one line
    try:
        argv = relaunch_argv(os.environ)
        if argv is not None:
            try:
                os.execv(sys.executable, argv)
            except OSError:
                pass  # go on with glibc's defaults
        from cnncli.cli import main as cli_main
    except BaseException as exc:
        interrupt = interrupts.within(exc)
        if interrupt is None and interrupts.last_signal() is None:
            raise
        signum = interrupts.signum_of(interrupt) if interrupt is not None else interrupts.last_signal()
        sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
        interrupts.leave(128 + signum)
    cli_main()
