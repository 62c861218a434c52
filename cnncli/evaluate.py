"""Evaluation: masked, padded batches so that every example counts exactly once.

`Evaluator` is shared by the training loop (validation, final test) and `cnn eval`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from cnncli.config import Config
from cnncli.errors import CheckpointError


class Evaluator:
    """Jit-compiled evaluation of one model graph over device-resident uint8 splits."""

    def __init__(self, parts: Any, *, num_classes: int, mean, std, mesh, batch_size: int):
        import jax

        from cnncli.distributed import batch_sharding, check_batch_size
        from cnncli.train.step import make_eval_step

        check_batch_size(batch_size, mesh, "train.eval_batch_size")
        self.mesh, self.batch_size, self.num_classes = mesh, batch_size, num_classes
        step = make_eval_step(parts, num_classes=num_classes, mean=mean, std=std)

        def indexed(params, batch_stats, data_x, data_y, idx, mask):
            return step(params, batch_stats, data_x[idx], data_y[idx], mask)

        self._step = jax.jit(indexed, out_shardings=None)
        self._sharding = batch_sharding(mesh)

    def run(self, params, batch_stats, data_x, data_y, num_examples: int, *, with_logits: bool = False
            ) -> tuple[dict[str, float], np.ndarray | None]:
        """Metrics over the first `num_examples` of the (device) arrays; logits [N, K] if asked."""
        import jax

        from cnncli.data.pipeline import eval_index_batches
        from cnncli.distributed import shard_global_batch

        totals = None
        logits_out = []
        for idx, mask in eval_index_batches(num_examples, self.batch_size):
            sums, logits = self._step(params, batch_stats, data_x, data_y, shard_global_batch(self.mesh, idx),
                                      shard_global_batch(self.mesh, mask))
            totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
            if with_logits:
                logits_out.append(np.asarray(jax.device_get(logits))[mask])
        t = {k: float(v) for k, v in jax.device_get(totals).items()}
        n = t["count"]
        metrics = {
            "loss": t["loss"] / n,
            "accuracy": t["correct"] / n,
            "top5_accuracy": t["correct_top5"] / n,
            "error": 1.0 - t["correct"] / n,
            "top5_error": 1.0 - t["correct_top5"] / n,
            "num_examples": int(round(n)),
        }
        return metrics, (np.concatenate(logits_out) if with_logits else None)


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a run's checkpoint, ready to evaluate."""

    config: Config
    parts: Any
    params: Any
    batch_stats: Any
    step: int
    meta: dict
    class_names: list[str]
    mean: list[float]
    std: list[float]
    run_path: Path


def load_checkpoint_model(path: str | Path, which: str = "best", overrides: list[str] | None = None) -> LoadedModel:
    """Restore the model of a run directory (or one checkpoint step directory) into a fresh model."""
    from cnncli.checkpoint import CheckpointManager, find_checkpoint_dir
    from cnncli.config import load_config
    from cnncli.models import create_model
    from cnncli.rundir import RunDir
    from cnncli.train.state import split_model

    ckpt_dir, step = find_checkpoint_dir(path)
    run = RunDir.open(ckpt_dir.parent)
    cfg = load_config(run.config, overrides)
    manager = CheckpointManager(ckpt_dir, best_metric=cfg.train.best_metric,
                                best_mode="max" if cfg.train.best_metric.endswith("accuracy") else "min",
                                read_only=True)
    if step is None:
        if which == "best":
            step = manager.best_step()
        elif which == "latest":
            step = manager.latest_step()
        else:
            try:
                step = int(which)
            except ValueError:
                raise CheckpointError(f"--checkpoint must be best, latest or a step number, got {which!r}") from None
            if step not in manager.steps():
                raise CheckpointError(f"{ckpt_dir} has no checkpoint for step {step}; it has {manager.steps()}")
    if step is None:
        raise CheckpointError(f"{ckpt_dir} holds no complete checkpoint")
    meta = manager.restore_meta(step)
    m = cfg.model
    identity = meta.get("model", {})
    model = create_model(m.name, num_classes=m.num_classes, input_shape=(m.input_size, m.input_size, m.in_channels),
                         abstract=True, check_input=False, **model_options(cfg))
    expected = {"name": m.name, "num_classes": m.num_classes, "input_shape": list(model.input_shape)}
    found = {k: identity.get(k) for k in expected}
    if identity and found != expected:
        raise CheckpointError(f"checkpoint {ckpt_dir / str(step)} holds {found}, but the config asks for {expected}")
    parts, params, batch_stats = split_model(model)
    target = {"params": params, "batch_stats": batch_stats}
    ema = meta.get("has_ema", False)
    if ema:
        target["ema_params"] = params
    restored, _, meta = manager.restore(step, target)
    manager.close()
    data_info = run.read_json("data.json") or {}
    return LoadedModel(cfg, parts, restored["params"], restored["batch_stats"], step, meta,
                       data_info.get("class_names", []), data_info.get("mean"), data_info.get("std"), run.path)


def model_options(cfg: Config) -> dict[str, Any]:
    """The create_model options of a config's model section."""
    m = cfg.model
    return {"dropout": m.dropout, "width": m.width, "shortcut": m.shortcut, "zero_init_residual": m.zero_init_residual,
            "bn_momentum": m.bn_momentum, "bn_epsilon": m.bn_epsilon, "dtype": m.dtype, "remat": m.remat,
            "lrn": m.lrn}


def evaluate_run(path: str | Path, *, split: str = "test", which: str = "best", batch_size: int | None = None,
                 overrides: list[str] | None = None) -> dict[str, Any]:
    """Evaluate a run's checkpoint on one split of its dataset; the dict matches results.json."""
    import jax.numpy as jnp

    from cnncli.data.pipeline import prepare_dataset
    from cnncli.distributed import make_mesh, replicate

    loaded = load_checkpoint_model(path, which, overrides)
    cfg = loaded.config
    data = prepare_dataset(cfg.data)
    x, y = data.split(split)
    mesh = make_mesh()
    bs = batch_size or cfg.train.eval_batch_size or cfg.train.batch_size
    ev = Evaluator(loaded.parts, num_classes=cfg.model.num_classes, mean=loaded.mean or data.mean,
                   std=loaded.std or data.std, mesh=mesh, batch_size=bs)
    params, stats = replicate(mesh, (loaded.params, loaded.batch_stats))
    metrics, _ = ev.run(params, stats, replicate(mesh, jnp.asarray(x)), replicate(mesh, jnp.asarray(y)), len(y))
    return {**metrics, "split": split, "checkpoint_step": loaded.step, "run": str(loaded.run_path)}
