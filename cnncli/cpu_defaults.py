"""cnn's CPU speed settings, applied when asked: the `cnn` command asks at start, a Python program
calls `cnncli.apply_cpu_defaults()` once, before it uses jax.

Importing any cnncli module changes nothing (no environment variable, no file, no compiler run).
This call does, where the CPU is the platform that will run:

- XLA_FLAGS gets cnn's default XLA:CPU flags (cnncli/xla_flags.py: only flags the installed jaxlib
  knows, never over the user's own, only before jax has started its backend);
- with `kernels=True`, the oneDNN handlers (cnncli/kernels) are built if this machine has none yet
  (one line on stderr says so; a few seconds, once) and loaded, so that convolutions traced from then
  on run through oneDNN. Where they cannot be had (no C++ compiler, a failed build) one line on
  stderr says why and XLA's own kernels run; where the oneDNN wheels are not installed (the `cpu`
  extra) XLA's kernels run without a word.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def apply_cpu_defaults(kernels: bool = True, announce: Callable[[str], None] = _stderr) -> dict:
    """Apply cnn's CPU settings (module docstring); returns what was done:
    {"xla_flags": [flags added], "kernels": "oneDNN x.y" | "XLA (why)" | None when not asked}."""
    from cnncli.xla_flags import apply_defaults, cpu_will_run

    done: dict = {"xla_flags": apply_defaults(), "kernels": None}
    if kernels and cpu_will_run(os.environ):
        from cnncli.kernels import load_onednn

        usable, how = load_onednn(announce)
        done["kernels"] = how if usable else f"XLA ({how})"
    return done
