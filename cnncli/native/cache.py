"""Where cnn keeps what it can rebuild: one folder, named one way, or none.

`cache_root()` is `$CNN_CACHE_DIR`, else `$XDG_CACHE_HOME/cnn`, else `~/.cache/cnn`; `cache_dir(kind)`
is a folder under it (`jax` for JAX's compiled steps, `kernels` for the oneDNN handlers, `xla` for
what cnn learnt about the installed jaxlib, `packs` for the pack files whose checksums passed).
Where no absolute folder can be named (HOME unset and the user without a passwd entry, a relative
path) there is no cache: None, never an error. Nothing
here creates the folder; a caller that cannot write it goes on without a cache.
"""

from __future__ import annotations

import os
from pathlib import Path


def _home(environ) -> Path | None:
    home = environ.get("HOME")
    if home is None:
        try:
            import pwd

            home = pwd.getpwuid(os.getuid()).pw_dir
        except (ImportError, KeyError, OSError):
            return None
    return Path(home) if home and os.path.isabs(home) else None


def cache_root(environ=None) -> Path | None:
    """cnn's cache folder (module docstring), or None where none can be named."""
    environ = os.environ if environ is None else environ
    if environ.get("CNN_CACHE_DIR"):
        root = Path(environ["CNN_CACHE_DIR"])
    elif environ.get("XDG_CACHE_HOME"):
        root = Path(environ["XDG_CACHE_HOME"]) / "cnn"
    else:
        home = _home(environ)
        root = home / ".cache" / "cnn" if home is not None else None
    return root if root is not None and root.is_absolute() else None


def cache_dir(kind: str, environ=None) -> Path | None:
    """The folder `kind` under cnn's cache folder, or None where there is no cache."""
    root = cache_root(environ)
    return root / kind if root is not None else None
