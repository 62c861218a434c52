"""The environment jax starts its backend from, checked before it does: JAX_PLATFORMS and XLA_FLAGS.

Both are read once, when jax first initialises a backend, and both fail badly there: a platform
whose plugin is not installed is a 57-line traceback, and XLA aborts the whole process on a flag
(or a flag value) it does not know, printing its own usage. `problem(environ)` names either in
one sentence first; `start_failure(exc)` turns jax's failure to start an installed plugin's
backend into one.

JAX_PLATFORMS is checked against the installed plugins (no jax import). XLA_FLAGS can only be
judged by XLA itself, so a child process starts jax's CPU backend with it (about a second, paid
once per value: an accepted value is remembered in cnn's cache, <cache>/xla/accepted.json (cnncli/native/cache.py), keyed
by the value and the jaxlib version). Nothing is checked or written while XLA_FLAGS is unset.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

from cnncli.atomic import write_text_atomic

# Plugin modules that bring each platform, and the extra of cnncli that installs them.
PLATFORM_PLUGINS = {
    "cuda": (("jax_cuda13_plugin", "jax_cuda12_plugin", "jax_plugins.xla_cuda13", "jax_plugins.xla_cuda12"),
             "pip install 'cnncli[cuda13]' (NVIDIA driver 580 or newer) or 'cnncli[cuda12]'"),
    "rocm": (("jax_rocm7_plugin", "jax_rocm60_plugin", "jax_plugins.xla_rocm7", "jax_plugins.xla_rocm60"),
             "jax's ROCm plugin (see jax's installation guide)"),
    "tpu": (("libtpu",), "pip install 'cnncli[tpu]'"),
}
KNOWN_PLATFORMS = ("cpu", "cuda", "gpu", "rocm", "tpu")
_XLA_LOG = re.compile(r"^[EF]\d{4} [\d:.]+\s+\d+ \S+\] (.*)$")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that is not there
        return False


def platforms_problem(environ) -> str | None:
    """Why JAX_PLATFORMS cannot work here (one sentence), or None."""
    value = environ.get("JAX_PLATFORMS") or ""
    names = value.split(",") if value else []  # as jax reads it: no spaces, no empty entries, lower case
    for name in names:
        if name not in KNOWN_PLATFORMS:
            what = "an empty entry" if not name.strip() else f"an unknown platform {name!r}"
            return (f"JAX_PLATFORMS={value!r} names {what}; expected some of {', '.join(KNOWN_PLATFORMS)}, "
                    "separated by commas")
    for name in names:
        wanted = ("cuda", "rocm") if name == "gpu" else (name,) if name in PLATFORM_PLUGINS else ()
        if wanted and not any(_installed(m) for w in wanted for m in PLATFORM_PLUGINS[w][0]):
            how = " or ".join(PLATFORM_PLUGINS[w][1] for w in wanted)
            what = "a GPU" if name == "gpu" else f"the {name} platform"
            return (f"JAX_PLATFORMS={value} asks for {what}, but jax's plugin for it is not installed: {how}; "
                    "or unset JAX_PLATFORMS to run on the CPU")
    return None


def _cache_file() -> Path | None:
    from cnncli.native.cache import cache_dir

    folder = cache_dir("xla")  # None where no cache folder can be named: judged every time
    return folder / "accepted.json" if folder is not None else None


def _key(value: str) -> str | None:
    """The cache key of an XLA_FLAGS value: it and the jaxlib version (None: not cacheable, a flag file)."""
    if not value.lstrip().startswith("--"):
        return None
    try:
        from importlib.metadata import version

        jaxlib = version("jaxlib")
    except Exception:  # noqa: BLE001 - no metadata: judge every time
        return None
    return hashlib.sha256(f"{jaxlib}\0{value}".encode()).hexdigest()


def _accepted() -> set[str]:
    path = _cache_file()
    try:
        data = json.loads(path.read_text()) if path is not None else []
        return set(data) if isinstance(data, list) else set()
    except (OSError, ValueError):
        return set()


def _remember(key: str) -> None:
    path = _cache_file()
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(_accepted() | {key})[-256:]
        write_text_atomic(path, json.dumps(keys))
    except OSError:
        pass  # judged again next time


def xla_reason(output: str) -> str:
    """XLA's own complaint from its log output, without the log prefix (its first error line)."""
    for line in output.splitlines():
        m = _XLA_LOG.match(line.strip())
        if m:
            return m.group(1).strip()[:300]
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "XLA refused it"


def xla_flags_problem(environ, known: frozenset[str] = frozenset(), timeout_s: float = 120.0) -> str | None:
    """Why XLA refuses XLA_FLAGS (one sentence), or None; judged by starting jax's CPU backend with it in a
    child process, unless this value was accepted before or holds nothing but the `known` tokens
    (cnn's own defaults)."""
    value = environ.get("XLA_FLAGS") or ""
    theirs = " ".join(t for t in value.split() if t not in known)
    if not theirs:
        return None
    key = _key(value)
    if key is not None and key in _accepted():
        return None
    env = {**environ, "JAX_PLATFORMS": "cpu"}
    try:
        proc = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True,
                              text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None  # cannot judge: let jax try
    if proc.returncode == 0:
        if key is not None:
            _remember(key)
        return None
    return f"XLA_FLAGS={theirs!r} is refused by XLA: {xla_reason(proc.stderr).rstrip('.')}; correct or unset it"


def problem(environ, known_flags: frozenset[str] = frozenset()) -> str | None:
    """The first reason the backend cannot start from this environment, or None."""
    return platforms_problem(environ) or xla_flags_problem(environ, known_flags)


_START_FAILED = re.compile(r"^Unable to initialize backend '([^']+)': (.*?)(?: \((?:set JAX_PLATFORMS|you may need)[^)]*\)\.?)?$",
                           re.S)


def start_failure(exc: BaseException) -> str | None:
    """One sentence for jax's failure to start an installed platform's backend (a CUDA plugin on a
    machine whose GPU or driver it cannot use, say), or None for any other error."""
    if not isinstance(exc, RuntimeError):
        return None
    match = _START_FAILED.match(str(exc).strip())
    if match is None:
        return None
    platform, reason = match.group(1), " ".join(match.group(2).split()).rstrip(".")
    if platform == "cpu":
        return f"jax could not start its CPU backend ({reason[:300]})"
    return (f"jax could not start its {platform!r} backend ({reason[:300]}); JAX_PLATFORMS=cpu runs on the CPU, "
            f"or uninstall jax's {platform} plugin")

