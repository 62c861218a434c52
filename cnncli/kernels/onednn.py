"""When the oneDNN kernels apply: the switch, the loading, and the reason when they do not.

They apply only once `load_onednn()` has built (once per machine) and loaded the handlers in this
process: the `cnn` command calls it at start, a Python program through `cnncli.apply_cpu_defaults()`.
Tracing never builds or loads anything: before `load_onednn()` every op traces to XLA's own kernels.

They run on a single CPU device only (a custom call has no sharding rule, so XLA would gather
a sharded batch onto every device). `CNN_ONEDNN=0` turns them off; `xla_kernels()` does so for
a block: XLA's cost and memory analysis cannot see into a custom call, so the summary and the
FLOP counts trace without them. jax caches traces per function, so a function traced before
must be wrapped afresh inside the block.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax

_forced_xla: contextvars.ContextVar[bool] = contextvars.ContextVar("cnn_forced_xla", default=False)
_lock = threading.Lock()
_loaded: dict[str, Any] = {}  # "handlers" or "reason", set once per process


@contextlib.contextmanager
def xla_kernels() -> Iterator[None]:
    """Trace with XLA's own convolutions and batch norm inside the block, whatever the machine."""
    token = _forced_xla.set(True)
    try:
        yield
    finally:
        _forced_xla.reset(token)


def _switched_off() -> bool:
    return os.environ.get("CNN_ONEDNN", "1") == "0"


def _stderr(line: str) -> None:
    import sys

    print(line, file=sys.stderr, flush=True)


def load_onednn(announce: Callable[[str], None] = _stderr) -> tuple[bool, str]:
    """Build the handlers if this machine has none yet and load them, once per process; `announce`
    gets one line before a build, or when they cannot be had for a reason the user should know (no
    compiler, a failed build). Returns onednn_status()."""
    if _switched_off():
        return onednn_status()
    with _lock:
        if not _loaded:
            from cnncli.kernels.build import Unavailable, build_and_load

            try:
                _loaded["handlers"] = build_and_load(announce)
            except Unavailable as e:
                _loaded["reason"] = str(e)
                if not e.quiet:
                    announce(f"cnn: convolutions run on XLA's own kernels: {e}")
    return onednn_status()


def onednn_status() -> tuple[bool, str]:
    """(usable, description): oneDNN's version when the handlers are loaded here, else why not."""
    if _switched_off():
        return False, "turned off by CNN_ONEDNN=0"
    if "handlers" in _loaded:
        return True, f"oneDNN {_loaded['handlers'].onednn_version}"
    return False, _loaded.get("reason", "not loaded (cnncli.apply_cpu_defaults() loads them; the cnn command does)")


def kernels_in_use() -> str:
    """What a convolution or batch norm traced now on this machine runs on, in words."""
    if jax.default_backend() != "cpu":
        return f"XLA ({jax.default_backend()})"
    if jax.device_count() != 1:
        return "XLA (oneDNN is used on one CPU device only)"
    usable, how = onednn_status()
    return how if usable else f"XLA ({how})"


def onednn_applies() -> bool:
    """Whether an op traced now may become a oneDNN call (its shapes and dtypes aside)."""
    if _forced_xla.get() or _switched_off():
        return False
    if jax.default_backend() != "cpu" or jax.device_count() != 1:
        return False
    return onednn_status()[0]
