"""The `cnn` console script: cnn's allocator settings for the commands that compute (one relaunch),
cnn's CPU defaults (cnncli.apply_cpu_defaults), then the CLI.

XLA:CPU allocates each training step's temporary buffers as one block (196 MB for ResNet-20 at
batch 128) that glibc maps fresh from the kernel and unmaps again every step, so every step
faults in and zeroes all of it anew: 50,000 faults of 4 KiB a step on this project's machine,
a sixth of the step. Settings read only when a process starts fix that:

- LD_PRELOAD of mimalloc (the `cmeel-mimalloc` wheel, in the `cpu` extra) with
  MIMALLOC_PURGE_DELAY=-1: freed blocks stay mapped and are reused, so a step faults about once.
  The memory kept is what the process freed, reused before anything new is mapped: the resident
  size stays at the step's peak between steps instead of dropping.
- Where mimalloc is not installed, GLIBC_TUNABLES=glibc.malloc.hugetlb=1: glibc asks for
  transparent huge pages, and the kernel faults such blocks 2 MiB at a time (about 480 faults a
  step). Needs glibc 2.35 or later and the kernel's transparent huge pages in `madvise` mode (with
  `always` there is nothing to gain, with `never` nothing to have).

(mimalloc replaced a large-block cache of cnn's own, large_blocks.c: measured as fast or faster,
benchmarks/RESULTS.md, "kept allocators".) So `cnn` replaces itself with the same command, once,
under what applies, when the command computes (train, eval, predict, show, bench, report; never for help),
the CPU is the platform that will run (cnncli.xla_flags.cpu_will_run), CNN_MALLOC_DEFAULTS is not 0,
and the user's environment has not chosen already: nothing is set where LD_PRELOAD brings another
allocator, the tunable is left out where GLIBC_TUNABLES names it, the purge delay where the user's
MIMALLOC_PURGE_DELAY sets it. The settings go into the new process's environment only (this one's
is left as it was, so a failed exec changes nothing), and the relaunched process restores the
user's values at start, so that its own children (Grain workers, a compiler, any subprocess) do not
inherit them. A Python program that imports cnn runs with its own allocator.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# In the relaunched process's environment: the user's values of the variables cnn set (null: unset).
RELAUNCHED = "CNN_RELAUNCHED"
# The commands that compile and run a network: they get the allocator settings and the oneDNN kernels.
COMPUTING = frozenset({"train", "eval", "predict", "show", "bench", "report"})


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


def _kept_allocator() -> str | None:
    """The path of mimalloc's library from the `cmeel-mimalloc` wheel, or None where it is not installed."""
    import importlib.metadata

    try:
        files = importlib.metadata.distribution("cmeel-mimalloc").files or ()
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith("/libmimalloc.so"):
            path = Path(f.locate()).resolve()
            return str(path) if path.is_file() else None
    return None


def computing_command(args: list[str]) -> bool:
    """Whether the command line `args` (without the program) runs a command that computes, help aside."""
    if any(a in ("--help", "-h") for a in args):
        return False
    command = next((a for a in args if not a.startswith("-")), None)
    return command in COMPUTING


def relaunch_env(environ) -> dict[str, str] | None:
    """The environment to relaunch this process with (a copy of `environ` with cnn's settings); None
    to go on as is. `environ` itself is never changed."""
    from cnncli.xla_flags import cpu_will_run

    if environ.get("CNN_MALLOC_DEFAULTS", "1").strip() == "0" or sys.platform != "linux":
        return None
    glibc = _glibc_version()
    if environ.get("LD_PRELOAD") or RELAUNCHED in environ or glibc is None:
        return None
    if not getattr(sys, "orig_argv", None) or not computing_command(sys.argv[1:]) or not cpu_will_run(environ):
        return None
    changes = {}
    preload = _kept_allocator()
    if preload:
        changes["LD_PRELOAD"] = preload
        if "MIMALLOC_PURGE_DELAY" not in environ:
            changes["MIMALLOC_PURGE_DELAY"] = "-1"  # keep freed blocks mapped for the next step
    elif ("glibc.malloc.hugetlb" not in environ.get("GLIBC_TUNABLES", "")
          and glibc >= (2, 35) and _thp_mode() == "madvise"):
        current = environ.get("GLIBC_TUNABLES", "")
        changes["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    if not changes:
        return None
    saved = {name: environ.get(name) for name in changes}
    return {**environ, **changes, RELAUNCHED: json.dumps(saved)}


def restore_user_environment(environ) -> None:
    """In a relaunched process: put back the user's values of what cnn set for it, so that its
    children start as the user would have them (what ld.so read at this process's start stays)."""
    try:
        saved = json.loads(environ.pop(RELAUNCHED, None) or "{}")
    except ValueError:
        return
    for name, value in (saved.items() if isinstance(saved, dict) else ()):
        if value is None:
            environ.pop(name, None)
        elif isinstance(value, str):
            environ[name] = value


def main() -> None:
    from cnncli import interrupts

    interrupts.install()  # from the first line (the relaunch below starts it again): a signal is one line
    try:
        if RELAUNCHED in os.environ:
            restore_user_environment(os.environ)
        else:
            env = relaunch_env(os.environ)
            if env is not None:
                try:
                    os.execve(sys.executable, list(sys.orig_argv), env)
                except OSError:
                    pass  # go on with glibc's defaults: this process's environment was never changed
        args = sys.argv[1:]
        if args and not any(a in ("--help", "-h") for a in args):
            from cnncli.cpu_defaults import apply_cpu_defaults

            # XLA flags before jax starts; oneDNN built (once per machine) and loaded before any tracing
            apply_cpu_defaults(kernels=computing_command(args))
        from cnncli.cli import main as cli_main
    except BaseException as exc:
        interrupt = interrupts.within(exc)
        if interrupt is None and interrupts.last_signal() is None:
            raise
        signum = interrupts.signum_of(interrupt) if interrupt is not None else interrupts.last_signal()
        sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
        interrupts.leave(128 + signum)
    cli_main()
