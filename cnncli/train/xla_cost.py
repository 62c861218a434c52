"""XLA's FLOP count of a compiled training step: the one reading `cnn bench` and `cnn summarize` share.

Read from the compiled executable (after XLA's optimisations: what runs), never from the lowered
module, whose count is XLA's before fusion and simplification (2.4% lower for ResNet-20's step).
None on a GPU: there the convolutions run as cuDNN custom calls that XLA's cost analysis does not
count (measured on an H200: 1.27 MFLOP of a tiny ResNet-20 step's 15.7 analytic, 8%), so its
figure would look like a FLOP count and be a twelfth of one.
"""

from __future__ import annotations

from typing import Any


def xla_flops(compiled: Any) -> float | None:
    """XLA's FLOP count of a compiled program, per device; None where the backend gives none (or, on a GPU,
    one that leaves out the convolutions)."""
    if gpu_leaves_out_convolutions():
        return None
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without cost analysis raise various errors
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops is not None and flops > 0 else None


def gpu_leaves_out_convolutions() -> bool:
    """Whether jax runs on a GPU, whose XLA cost analysis does not count cuDNN's convolutions."""
    import jax

    return jax.default_backend() == "gpu"
