"""Build and load the oneDNN handlers (onednn.cc): once per machine, when asked (never on import or while tracing).

oneDNN comes from the `onednn-cpu-gomp` / `onednn-devel-cpu-gomp` wheels, which put the library
and headers under the environment's `lib/` and `include/`; XLA's FFI headers come with jaxlib.
They come with the `cpu` extra (`pip install 'cnncli[cpu]'`). The handler library is compiled once
with the system's C++ compiler (~6 s) into cnn's cache, <cache>/kernels/ (cnncli/native/build.py:
named by a hash of everything it was built from, so an upgrade of either side builds a new one;
sealed against damage; with no writable cache, built for the process alone). Anything missing
(not Linux x86-64, no compiler, no wheels, a failed build or load) is reported as a reason, never
raised: the caller falls back to XLA's convolution.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from collections.abc import Callable

from cnncli.native.build import BuildError, built_library

SOURCE = Path(__file__).with_name("onednn.cc")
TARGETS = {  # XLA custom-call target -> symbol in the handler library
    "cnn_onednn_conv_forward": "CnnConvForward",
    "cnn_onednn_conv_backward_data": "CnnConvBackwardData",
    "cnn_onednn_conv_backward_weights": "CnnConvBackwardWeights",
    "cnn_onednn_norm_backward": "CnnNormBackward",
}


class Unavailable(Exception):
    """Why the oneDNN path cannot be used here (one line). `quiet`: nothing the user asked for is
    missing (another platform, the `cpu` extra not installed), so nothing to tell."""

    def __init__(self, reason: str, quiet: bool = False):
        super().__init__(reason)
        self.quiet = quiet


@dataclass(frozen=True)
class Handlers:
    library: ctypes.CDLL
    path: Path
    onednn_version: str


def _dist_file(dist: str, suffix: str) -> Path:
    try:
        d = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise Unavailable(f"the {dist} package is not installed (pip install 'cnncli[cpu]')", quiet=True) from None
    for f in d.files or ():
        if str(f).endswith(suffix):
            return Path(d.locate_file(f)).resolve()
    raise Unavailable(f"{dist} holds no {suffix}")


def build_and_load(announce: Callable[[str], None] = lambda line: None) -> Handlers:
    """Compile (once; `announce` gets one line before a build) and load the handler library, and
    register its targets with jax; raises Unavailable with the reason."""
    import platform

    import jax
    import jaxlib

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise Unavailable(f"no oneDNN wheels for {platform.system()} {platform.machine()}", quiet=True)
    libdnnl = _dist_file("onednn-cpu-gomp", "libdnnl.so.3")
    header = _dist_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    include = header.parents[2]
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise Unavailable("no C++ compiler (g++) to build the oneDNN handlers")
    st = libdnnl.stat()
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", str(SOURCE), f"-I{jax.ffi.include_dir()}",
           f"-I{include}", f"-L{libdnnl.parent}", "-l:libdnnl.so.3", f"-Wl,-rpath,{libdnnl.parent}"]
    key = [SOURCE.read_text(), jaxlib.__version__, str(libdnnl), str(st.st_size), str(include), compiler]
    try:
        with built_library("kernels", "onednn", key, cmd, "the oneDNN handlers", announce) as path:
            try:
                ctypes.CDLL(str(libdnnl), mode=ctypes.RTLD_GLOBAL)
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                raise Unavailable(f"cannot load the oneDNN handlers: {e}") from None
    except BuildError as e:
        raise Unavailable(str(e)) from None
    lib.cnn_onednn_version.restype = ctypes.c_char_p
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return Handlers(lib, path, lib.cnn_onednn_version().decode())
