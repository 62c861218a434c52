"""Which accelerator this machine has, and the extra that lets jax use it.

A GPU user who installs cnn with plain `pip install cnncli` gets jax's CPU build: jax then runs
on the CPU without a word. `hint()` names that case in one line — an NVIDIA GPU listed by
`nvidia-smi -L`, or a TPU's /dev/accel* devices, while jax's default backend is the CPU — with
the `pip install` that brings jax's plugin for it:

- NVIDIA: `cnncli[cuda13]` where the driver is 580 or newer (CUDA 13's minimum), else
  `cnncli[cuda12]` (jax's CUDA 12 wheels need driver 525 or newer);
- TPU: `cnncli[tpu]`.

Where jax's CUDA plugin is installed but did not start (jax then falls back to the CPU with a
warning of its own), the hint says so instead, and names the CUDA 12 extra where the driver is
older than the CUDA 13 plugin needs. No hint where the user chose the CPU (JAX_PLATFORMS=cpu) or
where jax already runs elsewhere.
"""

from __future__ import annotations

import glob
import importlib.metadata
import os
import shutil
import subprocess

CUDA13_MIN_DRIVER = 580  # jax's CUDA 13 wheels need an R580 driver; older ones get the CUDA 12 wheels
_TIMEOUT_S = 5.0


def _nvidia_smi(*args: str) -> list[str]:
    """Output lines of `nvidia-smi ARGS`, or [] where it is missing, fails or hangs."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=_TIMEOUT_S, check=False,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return []
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def nvidia_gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists (its `GPU i: NAME (UUID: ...)` lines), names only."""
    names = []
    for line in _nvidia_smi("-L"):
        head, sep, rest = line.partition(":")
        if sep and head.strip().startswith("GPU"):
            names.append(rest.split("(UUID")[0].strip())
    return names


def _driver_major() -> int | None:
    for line in _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader"):
        try:
            return int(line.strip().split(".")[0])
        except ValueError:
            continue
    return None


def cuda_extra() -> str:
    major = _driver_major()
    return "cuda13" if major is None or major >= CUDA13_MIN_DRIVER else "cuda12"


def cuda_plugins() -> list[str]:
    """The distributions of jax's CUDA plugins installed here, newest CUDA first."""
    found = []
    for dist in ("jax-cuda13-plugin", "jax-cuda12-plugin"):
        try:
            importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        found.append(dist)
    return found


def tpu_devices() -> list[str]:
    return sorted(glob.glob("/dev/accel[0-9]*"))


def cpu_chosen(environ=None) -> bool:
    """Whether the user asked for the CPU alone (JAX_PLATFORMS=cpu)."""
    environ = os.environ if environ is None else environ
    platforms = [p.strip().lower() for p in (environ.get("JAX_PLATFORMS") or "").split(",") if p.strip()]
    return platforms == ["cpu"]


def hint(backend: str, environ=None) -> str | None:
    """One warning line where an accelerator is visible but jax runs on `backend` == 'cpu'; else None."""
    if backend != "cpu" or cpu_chosen(environ):
        return None
    gpus = nvidia_gpus()
    if gpus:
        extra = cuda_extra()
        what = f"{len(gpus)} NVIDIA GPU{'s' if len(gpus) > 1 else ''} ({gpus[0]})"
        plugins = cuda_plugins()
        if plugins:
            major = _driver_major()
            fix = (f"the driver (R{major}) is older than the R{CUDA13_MIN_DRIVER} that {plugins[0]} needs: "
                   f"pip install 'cnncli[cuda12]' instead" if plugins == ["jax-cuda13-plugin"] and extra == "cuda12"
                   else "JAX_PLATFORMS=cuda prints jax's reason")
            return (f"warning: {what} visible to nvidia-smi and {plugins[0]} installed, but the plugin did not "
                    f"start and jax runs on the CPU: {fix} (JAX_PLATFORMS=cpu silences this)")
        return (f"warning: {what} visible to nvidia-smi, but jax runs on the CPU: "
                f"pip install 'cnncli[{extra}]' installs jax's CUDA plugin (JAX_PLATFORMS=cpu silences this)")
    if tpu_devices():
        return ("warning: a TPU is visible (/dev/accel*), but jax runs on the CPU: pip install 'cnncli[tpu]' "
                "installs jax's TPU plugin (JAX_PLATFORMS=cpu silences this)")
    return None


def warn_if_idle(echo) -> None:
    """Call `echo(line)` with `hint()` for jax's default backend, when there is one."""
    import jax

    line = hint(jax.default_backend())
    if line:
        echo(line)
