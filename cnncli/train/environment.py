"""What a run ran on, recorded in status.json when it starts: versions, device, kernels and XLA flags,
so that its numbers can be read (and compared) later, e.g. on `cnn report`'s page."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any


def run_environment() -> dict[str, Any]:
    """Versions of the stack, the device and its kernels, and the XLA flags of this process."""
    import flax
    import jax
    import jaxlib
    import numpy
    import optax

    from cnncli import __version__
    from cnncli.kernels import kernels_in_use

    device = jax.devices()[0]
    return {"cnn": __version__, "python": sys.version.split()[0], "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "flax": flax.__version__, "optax": optax.__version__,
            "numpy": numpy.__version__, "backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "kernels": kernels_in_use(),
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "os": platform.platform(), "cpu_count": os.cpu_count()}
