"""Which checkpoint is best: the direction of a metric and the one comparator.

Orbax's `best_fn`/`best_mode` rank the steps (the manager's `best_step` is Orbax's own answer);
`improves` is what the loop asks about early stopping. Orbax sorts stably by the metric, so among
equal values the later step wins, both in `best_step` and in which steps the BestN policy keeps.
"""

from __future__ import annotations


def metric_mode(name: str) -> str:
    """'max' for accuracy-like metrics (higher is better), 'min' for losses and errors."""
    n = name.lower()
    if "loss" in n or "error" in n:
        return "min"
    if "acc" in n or "top" in n or "f1" in n or "precision" in n or "recall" in n:
        return "max"
    raise ValueError(f"no known direction for metric {name!r}")


def improves(new: float, old: float | None, mode: str, *, strict: bool = True) -> bool:
    """Is `new` better than `old` ('max' or 'min' mode)? Non-strict counts a tie as better (later wins)."""
    if old is None:
        return True
    if strict:
        return new > old if mode == "max" else new < old
    return new >= old if mode == "max" else new <= old
