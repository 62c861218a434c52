"""How every `cnn` command ends on Ctrl-C, SIGTERM or SIGHUP: one line, exit 128 + the signal's number.

Each of the three signals raises `Interrupted` (a KeyboardInterrupt, so that `except Exception`
does not swallow it and `finally` blocks run) in the main thread. `cnn train` replaces these
handlers with its own around the step loop (cnncli.train.exits.SignalCatcher), which finishes the
step and checkpoints; anywhere else the command stops where it is.

Why the process then leaves with `os._exit`, at the moment the exception reaches the command's
error handling, rather than by returning through the interpreter's shutdown: a signal is
delivered between two bytecodes, which is often in the middle of jax tracing or lowering a
computation (Python code holding MLIR/XLA objects half built, called from jaxlib's C++) while
XLA's compiler threads still run. Freeing what the interrupted frames hold -- when the exception
is dropped, or in the interpreter's shutdown after jaxlib's module state is gone -- then
segfaults: `cnn summarize resnet50 --batch-size 64` interrupted during its compile, on this
project's machine, died with SIGSEGV after printing "interrupted" in 2 of 3 tries (the fault
with no Python frame on the stack). There is nothing left to save at that point -- `finally`
blocks and context managers have run while the exception travelled up -- so the command flushes
its output and ends, the exception and its frames still held.

An interrupt raised where Python cannot propagate it (a garbage-collection callback, `__del__`,
a weakref callback) is otherwise printed as "Exception ignored in ..." and dropped, and the
command goes on as if never interrupted (seen in jax's `_xla_gc_callback`). The unraisable hook
here re-sends the signal instead, so that it is raised again in the command's own code.
"""

from __future__ import annotations

import os
import signal
import sys

SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


class Interrupted(KeyboardInterrupt):
    """A signal asked the command to stop: `signum` is which, `exit_code` is 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.exit_code = 128 + signum


GRACE_S = 2.0  # how long the main thread may take to notice a signal before the watcher ends the command
AGAIN_S = 2.0  # how long an interrupt may travel up before it counts as swallowed and is raised again
_counts = {"arrived": 0, "handled": 0, "last": None, "taken": False}


def _importing(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


def _raise(signum, frame):
    _counts["handled"] += 1
    _counts["last"] = signum
    if _importing(frame):
        # an exception raised into a module's import is turned into an ImportError (an extension's init),
        # printed by the importer (numpy) or dropped (`except ImportError`), and a half-initialised extension
        # (jaxlib) segfaults later: the command has written nothing of its own while importing, so it ends now
        sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
        leave(128 + signum)
    if _counts["handled"] == 1:
        import threading

        threading.Thread(target=_again, args=(signum,), name="cnn-interrupt-again", daemon=True).start()
    raise Interrupted(signum)


def _again(signum: int) -> None:
    """Some code turns an exception into another or drops it (an extension module's import turns it into
    an ImportError, which `try: import x except ImportError` then drops; seen in jaxlib and numpy): the
    command would go on as if never interrupted. Until something that ends the command has taken the
    interrupt (`taken`), the signal is sent again every AGAIN_S seconds."""
    import time

    while True:
        time.sleep(AGAIN_S)
        if _counts["taken"]:
            return
        os.kill(os.getpid(), signum)


def taken() -> None:
    """The interrupt reached code that ends the command (status written, one line printed): no more of it."""
    _counts["taken"] = True


def last_signal() -> int | None:
    """The signal last raised as `Interrupted` in this process, if any."""
    return _counts["last"]


def _watch(fd: int) -> None:
    """Python runs a signal's handler only when the main thread is between two bytecodes: during a
    compile of a minute in XLA it waits for the minute. The interpreter writes each signal's number
    to `fd` at once, from its low-level handler; if the main thread has not run `_raise` within
    GRACE_S seconds, this thread says so and ends the process (there is nothing of the command's
    own that a native call in progress could leave half done: cnn's files are written by Python
    code, atomically)."""
    import time

    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        for signum in data:
            if signal.getsignal(signum) is not _raise:  # `cnn train`'s loop finishes its step instead
                continue
            _counts["arrived"] += 1
            time.sleep(GRACE_S)
            if _counts["handled"] < _counts["arrived"]:
                sys.stderr.write(f"interrupted ({signal.Signals(signum).name})\n")
                leave(128 + signum)


_installed = []


def install() -> None:
    """Route SIGINT, SIGTERM and SIGHUP to `Interrupted` in the main thread (the `cnn` command only, from
    its first line: cnncli.entry). A SIGHUP the parent set to be ignored (nohup) stays ignored.
    Once per process."""
    if _installed:
        return
    _installed.append(True)
    for s in SIGNALS:
        try:
            if s == getattr(signal, "SIGHUP", None) and signal.getsignal(s) is signal.SIG_IGN:
                continue  # nohup (a shell starts background jobs with SIGINT ignored: that one is caught)
            signal.signal(s, _raise)
        except (ValueError, OSError):  # not the main thread, or a platform without it
            pass
    _start_watcher()
    previous = sys.unraisablehook

    def unraisable(info):
        if isinstance(info.exc_value, KeyboardInterrupt):
            signum = getattr(info.exc_value, "signum", signal.SIGINT)
            import threading

            # sent again a moment later from another thread: sent now, it would be raised (and dropped)
            # inside this hook or the destructor that called it
            again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
            again.daemon = True
            again.start()
            return
        previous(info)

    sys.unraisablehook = unraisable


def _start_watcher() -> None:
    import threading

    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):  # not the main thread
        return
    threading.Thread(target=_watch, args=(r,), name="cnn-signal-watcher", daemon=True).start()


def within(exc: BaseException) -> KeyboardInterrupt | None:
    """The interrupt that `exc` is, or that caused it: a signal during an extension module's import
    comes out as ImportError ("Encountered an error while initializing the extension", jaxlib)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def signum_of(exc: BaseException) -> int:
    """The signal a KeyboardInterrupt stands for (a plain one is Ctrl-C)."""
    return getattr(exc, "signum", signal.SIGINT)


def message(exc: BaseException) -> str:
    return f"interrupted ({signal.Signals(signum_of(exc)).name})"


def alone() -> bool:
    """Whether this process is not one of several joined under jax.distributed (whose shutdown at exit
    the others wait for)."""
    if "jax" not in sys.modules:
        return True
    try:
        from jax._src import distributed
    except ImportError:  # pragma: no cover
        return True
    return distributed.global_state.client is None


def leave(code: int) -> None:
    """Flush what was printed and end the process now, without the interpreter's teardown."""
    taken()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
