"""cnn's default XLA:CPU flags, set before jax starts its CPU backend.

XLA reads `XLA_FLAGS` once, when jax first initialises a backend, and aborts the process on a
flag it does not know. So a default is added to the environment only when all of these hold:

- jax has not initialised a backend in this process yet (too late otherwise: nothing is set);
- the CPU is the backend that will run (no accelerator plugin installed, or JAX_PLATFORMS=cpu);
- the installed jaxlib knows the flag and the names its value uses (they are in jaxlib's
  shared library);
- the user's own XLA_FLAGS do not mention it (theirs always win);
- CNN_XLA_DEFAULTS is not 0.

Importing this module changes nothing: the `cnn` command calls `apply_defaults()` at start
(through `cnncli.apply_cpu_defaults()`, which a Python program calls the same way before it uses jax).
"""

from __future__ import annotations

import importlib.util
import json
import mmap
import os
import sys
from pathlib import Path

from cnncli.atomic import write_text_atomic
from cnncli.native.cache import cache_dir

# (flag, value, names the value needs in jaxlib, why). Measured in benchmarks/RESULTS.md.
CPU_DEFAULTS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("xla_cpu_experimental_ynn_fusion_type", "-individual_convolution",
     ("LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",),
     "convolutions through XLA's own multi-threaded emitters instead of one single-threaded YNNPACK "
     "call each: the ResNet-20 training step 1.5x faster on 2 cores, with XLA's losses. "
     "`dot,eltwise,reduce` is 10-20% faster still, but one and two devices no longer give the "
     "same losses under it (0.9% apart after 8 steps of the tests' small run), so it is left to XLA_FLAGS"),
)

# Modules of jax's accelerator plugins (jax_plugins is the namespace their PJRT parts live in).
_ACCELERATOR_PLUGINS = ("jax_plugins", "jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def _backend_started() -> bool:
    bridge = sys.modules.get("jax._src.xla_bridge")
    return bool(bridge is not None and getattr(bridge, "_backends", None))


def cpu_will_run(environ) -> bool:
    platforms = [p.strip() for p in (environ.get("JAX_PLATFORMS") or "").split(",") if p.strip()]
    if platforms:
        return platforms[0] == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in _ACCELERATOR_PLUGINS)


def _jaxlib_libraries() -> list[Path]:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    return sorted(p for p in root.glob("*.so") if p.stat().st_size > 1_000_000)


def _scan(paths: list[Path], flag: str) -> bool:
    needle = flag.encode()
    for path in paths:
        try:
            with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
        except (OSError, ValueError):
            continue
    return False


def _cache_file() -> Path | None:
    folder = cache_dir("xla")
    return folder / "flags.json" if folder is not None else None


def jaxlib_knows(flag: str) -> bool:
    """Whether the installed jaxlib holds the name `flag` (an XLA flag without its --, or an enum
    value's name).

    Found by its name in jaxlib's shared library (a few ms when present; a full scan of ~350 MB
    when absent), remembered per library file in cnn's cache (cnncli/native/cache.py: xla/flags.json;
    no cache where there is no such folder or it cannot be written)."""
    paths = _jaxlib_libraries()
    key = "|".join(f"{p}:{st.st_size}:{st.st_mtime_ns}" for p in paths for st in [p.stat()]) + "|" + flag
    cache = _cache_file()
    known = {}
    try:
        known = json.loads(cache.read_text()) if cache is not None else {}
        if isinstance(known, dict) and isinstance(known.get(key), bool):
            return known[key]
    except (OSError, ValueError):
        known = {}
    found = _scan(paths, flag)
    if cache is None:
        return found
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        entries = known if isinstance(known, dict) else {}
        entries = {k: v for k, v in entries.items() if k.startswith(key.rsplit("|", 1)[0])}  # this jaxlib only
        write_text_atomic(cache, json.dumps({**entries, key: found}))
    except OSError:
        pass  # an unwritable cache: scan again next time
    return found


def apply_defaults(environ=None) -> list[str]:
    """Add cnn's default CPU flags to XLA_FLAGS where they are safe (module docstring); returns those added."""
    environ = os.environ if environ is None else environ
    if environ.get("CNN_XLA_DEFAULTS", "1").strip() == "0" or _backend_started() or not cpu_will_run(environ):
        return []
    current = environ.get("XLA_FLAGS", "")
    added = [f"--{name}={value}" for name, value, needs, _ in CPU_DEFAULTS
             if name not in current and all(jaxlib_knows(n) for n in (name, *needs))]
    if added:
        environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
    return added
