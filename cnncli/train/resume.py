"""What `cnn train --resume RUN [--set ...]` may change, and when there is nothing left to do.

A resumed run keeps its identity -- the model, the data and how it is split, the batch and
the random streams, the optimizer's state layout -- because its checkpoints, split.json,
data.json and results.json all depend on it. A user may extend it: more epochs or steps, a
different schedule or learning rate from here on, other logging, evaluation and checkpoint
cadences, a moved dataset path, other worker counts.
"""

from __future__ import annotations

import math
from typing import Any

from cnncli.config import Config
from cnncli.errors import ConfigError

# Dotted keys (or whole sections, ending in ".") a resume may change.
EXTENSIBLE = (
    "train.epochs", "train.steps", "train.log_every_steps", "train.eval_every_epochs", "train.eval_every_steps",
    "train.checkpoint_every_epochs", "train.checkpoint_every_steps", "train.keep_last", "train.eval_batch_size",
    "train.early_stopping_patience", "train.eval_test", "train.on_nonfinite",
    "schedule.", "optimizer.lr", "output.", "data.path", "data.num_workers", "data.skip_corrupt",
    "distributed.", "train.shard_params",
)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _allowed(key: str) -> bool:
    return any(key == e or (e.endswith(".") and key.startswith(e)) for e in EXTENSIBLE)


def check_resume_changes(saved: Config, new: Config, run_path) -> None:
    """Refuse overrides that would change what the run is (see the module docstring)."""
    before, after = _flat(saved.to_dict()), _flat(new.to_dict())
    changed = sorted(k for k in after if before.get(k) != after[k])
    refused = [k for k in changed if not _allowed(k)]
    if refused:
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after[k]!r})" for k in refused[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise ConfigError(
            f"--resume {run_path} cannot change {shown}{more}: that changes what the run is; "
            "start a new run instead (a resume may change epochs/steps, the schedule, optimizer.lr, "
            "logging/evaluation/checkpoint cadence, output and data.path)")


def finished_note(status: dict | None, new: Config) -> str | None:
    """A note saying the run is already finished, unless `new` extends it; None when there is work to do."""
    if not status or status.get("status") != "finished":
        return None
    total, spe = status.get("total_steps"), status.get("steps_per_epoch")
    if not total or not spe:
        return None
    t = new.train
    wanted = t.steps if t.steps is not None else max(1, math.ceil(t.epochs * spe))
    if wanted > total:
        return None
    return (f"run is already finished ({total} steps, {total / spe:.3g} epochs); nothing to do. "
            f"To train further, extend it, e.g. --set train.epochs={math.ceil(total / spe) * 2}")
