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


def check_same_data(run: Any, data: Any) -> None:
    """Refuse a resume whose data is not the data the run started with (data.path may move a dataset,
    not replace it): class names, image shape, split sizes and the split itself, as data.json and
    split.json recorded them, and the normalisation constants. Runs without those files are not checked."""
    import json

    saved, split = run.read_json("data.json"), run.read_json("split.json")
    changes = []
    if isinstance(saved, dict):
        now = {"class_names": list(data.class_names), "image_shape": list(data.image_shape), "sizes": data.sizes()}
        for key, value in now.items():
            if key in saved and saved[key] != value:
                old, new = saved[key], value
                if key == "class_names":
                    old, new = _names(old), _names(new)
                changes.append(f"{key.replace('_', ' ')} {old} -> {new}")
        for key in ("mean", "std"):
            old, new = saved.get(key), getattr(data, key)
            if isinstance(old, list) and (len(old) != len(new) or any(
                    not isinstance(a, (int, float)) or not math.isclose(a, float(b), rel_tol=1e-6, abs_tol=1e-9)
                    for a, b in zip(old, new))):
                changes.append(f"{key} {old} -> {[round(float(b), 6) for b in new]}")
    if isinstance(split, dict) and not changes and split != json.loads(json.dumps(data.split_info)):
        changes.append("the split (split.json: which images are train, validation and test)")
    if changes:
        raise ConfigError(f"--resume {run.path}: the data is not the data the run started with "
                          f"({'; '.join(changes[:3])}): data.path may point at a moved copy of it, not at other "
                          "data; start a new run for that")


def _names(names: Any) -> str:
    names = list(names) if isinstance(names, list) else [names]
    return repr(names) if len(names) <= 6 else f"[{', '.join(map(repr, names[:5]))}, ... ({len(names)} classes)]"


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


def recorded_step(run: Any) -> int:
    """The furthest step a run's own records reach (metrics.jsonl, status.json); 0 when none.

    Unreadable lines and files count as no record: this only decides whether a resume without a
    checkpoint would throw recorded work away."""
    import json

    steps = [0]
    path = run.metrics_jsonl
    if path.is_file():
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        for line in lines:
            try:
                step = json.loads(line).get("step")
            except (ValueError, AttributeError):
                continue
            if isinstance(step, int):
                steps.append(step)
    try:
        status = run.read_json("status.json")
    except Exception:  # noqa: BLE001 - an unreadable status is no record
        status = None
    if isinstance(status, dict) and isinstance(status.get("step"), int):
        steps.append(status["step"])
    return max(steps)


def starts_over(run: Any, restart: bool) -> bool:
    """Whether `--resume` of `run` starts from step 0 because no checkpoint step is left in it.

    Refused (a CheckpointError naming the furthest recorded step) where the run's records show work
    that would be redone, unless `restart`: checkpoints deleted by hand or by a cleanup are not
    silently replaced by a fresh start. A run stopped before it recorded a step starts over."""
    from cnncli.errors import CheckpointError

    try:
        if any(p.name.isdigit() for p in run.checkpoints.iterdir()):
            return False  # complete, damaged or unverified: the checkpoint manager decides
    except OSError:
        pass
    reached = recorded_step(run)
    if reached > 0 and not restart:
        raise CheckpointError(
            f"cannot resume {run.path}: no checkpoint of it is left in {run.checkpoints} although its records "
            f"reach step {reached}; to train it again from step 0 in place, add --restart")
    return True
