"""Orbax checkpoints of a run: save / restore / latest / best.

Each checkpoint step holds three items:
  model  -- params, BatchNorm statistics, EMA params (what evaluation needs)
  train  -- optimizer state, step, lr scale, non-finite counters (what resuming needs too)
  meta   -- JSON: epoch, data position, counters, plateau state, model identity, class names

Keeps the latest `keep_last` plus the best `keep_best` by the chosen metric (a preservation
policy, so that keeping the best never deletes the latest). Saves are asynchronous and
atomic: Orbax writes into a temporary directory and renames it when complete, so a crash
mid-save leaves the previous checkpoint restorable; leftover temporaries are removed on open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncli.errors import CheckpointError

ITEMS = ("model", "train", "meta")


def _ocp():
    import logging

    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax logs routine notices as warnings

    return ocp


def _is_checkpoint_step(path: Path) -> bool:
    return path.is_dir() and path.name.isdigit() and (path / "meta").exists()


class CheckpointManager:
    """A thin wrapper over `orbax.checkpoint.CheckpointManager` for a run's `checkpoints/` directory."""

    def __init__(self, directory: str | Path, *, keep_last: int = 2, keep_best: int = 1,
                 best_metric: str = "val_accuracy", best_mode: str = "max", read_only: bool = False,
                 asynchronous: bool = True):
        ocp = _ocp()
        from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

        self.directory = Path(directory).absolute()
        self.best_metric, self.best_mode = best_metric, best_mode
        if not read_only:
            self._clean_temporaries()
        policy = pp.AnyPreservationPolicy([
            pp.LatestN(n=keep_last),
            pp.BestN(get_metric_fn=lambda m: m[best_metric], reverse=(best_mode == "min"), n=keep_best,
                     keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn only makes orbax persist each step's metrics (deletion follows the policy above).
            best_fn=lambda m: m[best_metric],
            best_mode=best_mode,
            keep_checkpoints_without_metrics=True,
            enable_async_checkpointing=asynchronous,
            create=not read_only,
            read_only=read_only,
        )
        self._mgr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def _clean_temporaries(self) -> None:
        import shutil

        if self.directory.exists():
            for tmp in self.directory.glob("*.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)

    # -- writing ------------------------------------------------------------------------

    def save(self, step: int, model_tree: Any, train_tree: Any, meta: dict, metrics: dict | None = None) -> None:
        """Start an asynchronous save of one step (returns once the arrays are copied off the device)."""
        ocp = _ocp()
        args = ocp.args.Composite(
            model=ocp.args.StandardSave(model_tree),
            train=ocp.args.StandardSave(train_tree),
            meta=ocp.args.JsonSave(meta),
        )
        self._mgr.save(step, args=args, metrics=metrics, force=True)

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()

    # -- reading ------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return sorted(self._mgr.all_steps())

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        """The step with the best `best_metric` among checkpoints that carry metrics (else the latest)."""
        scored = []
        for s in self.steps():
            m = self._mgr.metrics(s)
            if m and self.best_metric in m:
                scored.append((m[self.best_metric], s))
        if not scored:
            return self.latest_step()
        # Ties go to the later step, as orbax's BestN policy keeps it.
        if self.best_mode == "max":
            return max(scored)[1]
        return min(scored, key=lambda t: (t[0], -t[1]))[1]

    def restore_meta(self, step: int) -> dict:
        ocp = _ocp()
        return dict(self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step: int, model_target: Any, train_target: Any | None = None) -> tuple[Any, Any, dict]:
        """Restore (model_tree, train_tree or None, meta) for `step` into the given abstract targets."""
        ocp = _ocp()
        items = {"model": ocp.args.StandardRestore(model_target), "meta": ocp.args.JsonRestore()}
        if train_target is not None:
            items["train"] = ocp.args.StandardRestore(train_target)
        try:
            out = self._mgr.restore(step, args=ocp.args.Composite(**items))
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} does not match the model being restored: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from None
        return out["model"], out.get("train") if train_target is not None else None, dict(out["meta"])


def find_checkpoint_dir(path: str | Path) -> tuple[Path, int | None]:
    """Resolve a run dir, a checkpoints dir or one step dir to (checkpoints_dir, step or None)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no such run or checkpoint: {p}")
    if _is_checkpoint_step(p):
        return p.parent, int(p.name)
    if (p / "checkpoints").is_dir():
        p = p / "checkpoints"
    if p.is_dir() and any(_is_checkpoint_step(c) for c in p.iterdir()):
        return p, None
    raise CheckpointError(f"{path} holds no complete checkpoint (expected a run directory or checkpoints/<step>)")


def flatten_tree(tree: Any) -> dict[str, Any]:
    """{'params/layer1/0/conv1/kernel': array, ...} from a nested model tree."""
    import jax
    import numpy as np

    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        key = "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)
        flat[key] = np.asarray(jax.device_get(leaf))
    return flat


def export_weights(path: Path, model_tree: Any, fmt: str) -> Path:
    """Write the weights as one portable file: safetensors, or flax msgpack of the flat dict."""
    flat = flatten_tree(model_tree)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == "safetensors":
        from safetensors.numpy import save_file

        save_file(flat, str(tmp))
    else:
        from flax import serialization

        tmp.write_bytes(serialization.msgpack_serialize(flat))
    import os

    os.replace(tmp, path)
    return path
