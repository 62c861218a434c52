"""Everything a run needs before its first step, built without writing a file.

`build_training` resolves the config against the data (a new value, never a mutation),
builds the model, optimizer, schedule, initial state, compiled step, evaluator and feed.
`restore_training` brings a run's newest intact checkpoint into that state. Both raise a
CnnError for any user mistake before the run directory is touched.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from cnncli.config import Config, model_options, resolve_data_shape, resolve_model_shape
from cnncli.errors import CheckpointError


@dataclasses.dataclass
class TrainingSetup:
    cfg: Config  # resolved against the data: what config.yaml stores
    data: Any  # cnncli.data.dataset.Dataset
    mesh: Any
    parts: Any  # ModelParts
    tx: Any
    schedule: Any
    state: Any  # TrainState (host, before replication)
    stream: Any  # TrainIndexStream
    total_steps: int
    plateau: Any  # PlateauController or None
    evaluator: Any
    feed: Any
    init_report: dict[str, Any]  # fine-tuning: parameter groups loaded, re-initialised, frozen ({} otherwise)
    state_sharding: Any = None  # NamedSharding per state leaf: replicated, or split over `data` (shard_params)

    @property
    def steps_per_epoch(self) -> int:
        return self.stream.steps_per_epoch

    @property
    def identity(self) -> dict[str, Any]:
        """What a checkpoint of this run must match to be restored into it."""
        m = self.cfg.model
        return {"name": m.name, "num_classes": m.num_classes, "input_shape": list(self.data.image_shape)}


def model_tree(state) -> dict:
    """What evaluation needs: parameters, BatchNorm statistics, EMA parameters."""
    tree = {"params": state.params, "batch_stats": state.batch_stats}
    if state.ema_params is not None:
        tree["ema_params"] = state.ema_params
    return tree


def train_tree(state) -> dict:
    """What resuming needs besides the model tree."""
    return {"opt_state": state.opt_state, "step": state.step, "lr_scale": state.lr_scale,
            "nonfinite_steps": state.nonfinite_steps, "first_nonfinite_step": state.first_nonfinite_step}


def total_steps_of(cfg: Config, steps_per_epoch: int) -> int:
    t = cfg.train
    return t.steps if t.steps is not None else max(1, math.ceil(t.epochs * steps_per_epoch))


def build_training(cfg: Config, init: Callable[[dict, int], tuple[dict, dict]] | None = None) -> TrainingSetup:
    """Everything before the first step. `init(template, num_classes) -> (tree, report)` replaces the
    freshly initialised {params, batch_stats} (fine-tuning from stored weights)."""
    from cnncli.checkpoint import metric_mode
    from cnncli.data.pipeline import TrainIndexStream, prepare_dataset
    from cnncli.distributed import check_batch_size, make_mesh, state_shardings
    from cnncli.models import create_model
    from cnncli.train.evaluator import Evaluator
    from cnncli.train.feeds import make_feed
    from cnncli.train.optim import PlateauController, build_optimizer, build_schedule
    from cnncli.train.state import batchnorm_layers, init_train_state, split_model
    from cnncli.train.step import make_train_step

    t = cfg.train
    cfg = resolve_data_shape(cfg)
    data = prepare_dataset(cfg.data)
    cfg = resolve_model_shape(cfg, data.image_shape, data.num_classes)
    mesh = make_mesh()
    check_batch_size(t.batch_size, mesh)
    model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, input_shape=data.image_shape,
                         seed=t.seed, **model_options(cfg.model))
    frozen, mask, inference = None, None, frozenset()
    if t.freeze:
        from flax import nnx

        from cnncli.train.freeze import freeze_mask, frozen_groups

        mask = freeze_mask(nnx.state(model, nnx.Param), list(t.freeze))  # the tree of the params split below
        frozen = frozen_groups(mask)[0]
        if t.freeze_epochs is None:  # frozen for good: their BatchNorm layers run in inference mode
            inference = frozenset(frozen) & batchnorm_layers(model)
    parts, params, batch_stats = split_model(model, inference)
    report: dict[str, Any] = {}
    if init is not None:
        tree, report = init({"params": params, "batch_stats": batch_stats}, cfg.model.num_classes)
        params, batch_stats = tree["params"], tree["batch_stats"]
    if frozen is not None:
        report = {**report, "frozen": frozen, "frozen_epochs": t.freeze_epochs,
                  "batchnorm_inference": sorted(inference)}

    stream = TrainIndexStream(len(data.y_train), t.batch_size, t.seed)
    spe = stream.steps_per_epoch
    total = total_steps_of(cfg, spe)
    schedule = build_schedule(cfg.schedule, cfg.optimizer.lr, spe, total)
    tx = build_optimizer(cfg.optimizer, schedule)
    if frozen is not None:
        from cnncli.train.freeze import frozen_until

        until = None if t.freeze_epochs is None else int(round(t.freeze_epochs * spe))
        tx = frozen_until(tx, mask, until)
    state = init_train_state(params, batch_stats, tx, ema=t.ema_decay is not None)
    plateau = None
    if cfg.schedule.name == "plateau":
        s = cfg.schedule
        plateau = PlateauController(mode=metric_mode(s.metric), patience=s.patience, factor=s.factor,
                                    min_scale=s.min_lr / cfg.optimizer.lr, threshold=s.threshold)
    step_fn = make_train_step(
        parts, tx, schedule, num_classes=cfg.model.num_classes, augment=cfg.data.augment, mean=data.mean,
        std=data.std, seed=t.seed, label_smoothing=t.label_smoothing, grad_accum_steps=t.grad_accum_steps,
        ema_decay=t.ema_decay, stop_on_nonfinite=t.on_nonfinite == "stop", input_size=data.image_shape[0])
    evaluator = Evaluator(parts, num_classes=cfg.model.num_classes, mean=data.mean, std=data.std, mesh=mesh,
                          batch_size=t.eval_batch_size or t.batch_size, input_size=data.image_shape[0])
    state_sharding = state_shardings(mesh, state, shard=t.shard_params)
    feed = make_feed(data, mesh, step_fn, evaluator, cfg, state_sharding if t.shard_params else None)
    return TrainingSetup(cfg, data, mesh, parts, tx, schedule, state, stream, total, plateau, evaluator, feed,
                         report, state_sharding)


def restore_training(setup: TrainingSetup, manager, run_path, console) -> tuple[Any, dict] | None:
    """(state, meta) of the run's newest intact checkpoint, or None when it has none.

    Damaged newer checkpoints are passed over with a warning naming each; a checkpoint of
    another model is refused.
    """
    def same_model(meta: dict) -> None:
        saved = meta.get("model")
        if saved and saved != setup.identity:
            raise CheckpointError(f"cannot resume {run_path}: its checkpoint holds {saved} but the config now asks "
                                  f"for {setup.identity}")

    restored = manager.restore_latest_intact(model_tree(setup.state), train_tree(setup.state), check_meta=same_model)
    if restored is None:
        return None
    for warning in restored.skipped:
        console.print(f"warning: {warning}")
    mtree, ttree, meta = restored.model, restored.train, restored.meta
    state = setup.state.replace(params=mtree["params"], batch_stats=mtree["batch_stats"],
                                ema_params=mtree.get("ema_params"), **ttree)
    if setup.plateau is not None and meta.get("plateau"):
        setup.plateau.load_state_dict(meta["plateau"])
    return state, meta
