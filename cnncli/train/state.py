"""The training state: one pytree that the jit-compiled step maps to its successor."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct


@struct.dataclass
class TrainState:
    step: jax.Array  # int32: optimizer steps taken
    params: Any  # nnx.State of nnx.Param
    batch_stats: Any  # nnx.State of nnx.BatchStat (running statistics)
    opt_state: Any
    ema_params: Any  # nnx.State like params, or None
    lr_scale: jax.Array  # float32 factor set by the host (reduce-on-plateau)
    nonfinite_steps: jax.Array  # int32: steps whose loss or gradient was NaN/Inf (update not applied)
    first_nonfinite_step: jax.Array  # int32: first such step, -1 if none


@struct.dataclass
class ModelParts:
    """The static half of a split model: graphdefs for training and evaluation, and the RNG streams."""

    train_graph: Any = struct.field(pytree_node=False)
    eval_graph: Any = struct.field(pytree_node=False)
    rng_state: Any  # nnx RNG stream variables (reseeded every step; never checkpointed)


def split_model(model: nnx.Module, inference_modules: frozenset[str] = frozenset()) -> tuple[ModelParts, Any, Any]:
    """Split into (ModelParts, params, batch_stats).

    Modules whose dotted path is in `inference_modules` (frozen BatchNorm layers) stay in inference
    mode in the training graph too: they normalise with, and do not update, their running statistics.
    """
    model.train()
    for path, module in model.iter_modules():
        if ".".join(map(str, path)) in inference_modules:
            module.eval()
    train_graph, params, batch_stats, rng_state = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    model.eval()
    eval_graph = nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0]
    model.train()
    return ModelParts(train_graph, eval_graph, rng_state), params, batch_stats


def batchnorm_layers(model: nnx.Module) -> frozenset[str]:
    """Dotted paths of the model's BatchNorm layers (the modules that have an inference mode to keep)."""
    return frozenset(".".join(map(str, path)) for path, module in nnx.iter_modules(model)
                     if isinstance(module, nnx.BatchNorm))


def init_train_state(params: Any, batch_stats: Any, tx: optax.GradientTransformation, ema: bool) -> TrainState:
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
        lr_scale=jnp.ones((), jnp.float32),
        nonfinite_steps=jnp.zeros((), jnp.int32),
        first_nonfinite_step=jnp.full((), -1, jnp.int32),
    )


def count_params(state: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(state)))
