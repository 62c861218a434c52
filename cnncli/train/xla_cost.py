"""XLA's FLOP count of a compiled training step: the one reading `cnn bench` and `cnn summarize` share.

Read from the compiled executable (after XLA's optimisations: what runs), never from the lowered
module, whose count is XLA's before fusion and simplification (2.4% lower for ResNet-20's step).
"""

from __future__ import annotations

from typing import Any


def xla_flops(compiled: Any) -> float | None:
    """XLA's FLOP count of a compiled program, per device; None where the backend gives none."""
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - backends without cost analysis raise various errors
        return None
    if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
        cost = cost[0] if cost else None
    flops = cost.get("flops") if isinstance(cost, dict) else None
    return float(flops) if flops is not None and flops > 0 else None
