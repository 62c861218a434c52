"""Optimizers and learning-rate schedules built from the config.

Durations given in epochs are converted to steps here, once the data size is known.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from cnncli.config import OptimizerConfig, ScheduleConfig

Schedule = Callable[[jax.Array], jax.Array]


def warmup_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> int:
    if cfg.warmup_steps is not None:
        return int(cfg.warmup_steps)
    return int(round(cfg.warmup_epochs * steps_per_epoch))


def milestone_steps(cfg: ScheduleConfig, steps_per_epoch: int) -> list[int]:
    if cfg.milestone_steps is not None:
        return sorted(int(s) for s in cfg.milestone_steps)
    return sorted(int(round(e * steps_per_epoch)) for e in cfg.milestones)


def build_schedule(cfg: ScheduleConfig, base_lr: float, steps_per_epoch: int, total_steps: int) -> Schedule:
    """lr(step) for 0-based optimizer steps. Linear warmup from base/warmup to base, then the main schedule.

    - constant / plateau: base (plateau multiplies by a host-controlled factor, see PlateauController)
    - step: base * gamma ** (number of milestones <= step)
    - cosine: from base to final_lr over the steps after warmup
    - polynomial: base -> final_lr with the given power over the steps after warmup
    """
    warm = warmup_steps(cfg, steps_per_epoch)
    decay_steps = max(1, total_steps - warm)
    if cfg.name in ("constant", "plateau"):
        def main(step):
            return jnp.full_like(step, base_lr, dtype=jnp.float32)
    elif cfg.name == "step":
        bounds = jnp.asarray(milestone_steps(cfg, steps_per_epoch), jnp.int32)

        def main(step):
            passed = jnp.sum(step >= bounds)
            return base_lr * jnp.power(jnp.float32(cfg.gamma), passed.astype(jnp.float32))
    elif cfg.name == "cosine":
        def main(step):
            t = jnp.clip((step - warm) / decay_steps, 0.0, 1.0)
            return cfg.final_lr + (base_lr - cfg.final_lr) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
    elif cfg.name == "polynomial":
        def main(step):
            t = jnp.clip((step - warm) / decay_steps, 0.0, 1.0)
            return cfg.final_lr + (base_lr - cfg.final_lr) * jnp.power(1.0 - t, cfg.power)
    else:  # validated in config
        raise ValueError(cfg.name)

    def schedule(step):
        step = jnp.asarray(step, jnp.int32)
        lr = main(step).astype(jnp.float32)
        if warm > 0:
            lr = jnp.where(step < warm, base_lr * (step + 1).astype(jnp.float32) / warm, lr)
        return lr

    return schedule


NO_DECAY_NAMES = frozenset({"bias", "scale"})  # biases; scale and bias of BatchNorm / LayerNorm / GroupNorm


def parameter_name(path: tuple) -> str | None:
    """The name a parameter has in its module ("kernel", "bias", "scale", ...).

    An nnx.State path ends in the variable's own attribute (`.value`), so the name is the
    last dictionary key that is a string, not the last entry of the path.
    """
    for entry in reversed(path):
        key = getattr(entry, "key", None)
        if isinstance(key, str):
            return key
    return None


def decay_mask(params):
    """True for weights (convolution and dense kernels), False for every parameter named `bias`
    or `scale` (biases; BatchNorm and the other Flax norms' scale and bias). Same tree
    structure as `params` (an nnx.State or a nested dict)."""
    def is_weight(path, _) -> bool:
        return parameter_name(path) not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(is_weight, params)


def build_optimizer(cfg: OptimizerConfig, schedule: Schedule) -> optax.GradientTransformation:
    """The configured optimizer. L2 decay is added to the gradient (coupled) except for AdamW (decoupled)."""
    mask = None if cfg.decay_norm_and_bias else decay_mask
    parts = []
    if cfg.clip_grad_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.clip_grad_norm))
    if cfg.weight_decay > 0 and cfg.name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay, mask))
    if cfg.name == "sgd":
        parts.append(optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
    elif cfg.name == "adam":
        parts.append(optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps))
    elif cfg.name == "adamw":
        parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=mask))
    elif cfg.name == "rmsprop":
        parts.append(optax.rmsprop(schedule, decay=cfg.decay, eps=cfg.eps, momentum=cfg.momentum or None,
                                   nesterov=cfg.nesterov))
    return optax.chain(*parts)


@dataclasses.dataclass
class PlateauController:
    """Host-side 'divide the learning rate when the validation metric stops improving'.

    Its `scale` multiplies the schedule's learning rate inside the step (TrainState.lr_scale).
    """

    mode: str  # "max" or "min"
    patience: int
    factor: float
    min_scale: float
    threshold: float = 1e-4
    best: float | None = None
    bad_evals: int = 0
    scale: float = 1.0

    def update(self, value: float) -> float:
        improved = self.best is None or (
            value > self.best * (1 + self.threshold) if self.mode == "max" else value < self.best * (1 - self.threshold)
        )
        if improved:
            self.best, self.bad_evals = value, 0
        else:
            self.bad_evals += 1
            if self.bad_evals > self.patience:
                self.scale = max(self.scale * self.factor, self.min_scale)
                self.bad_evals = 0
        return self.scale

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_evals": self.bad_evals, "scale": self.scale}

    def load_state_dict(self, d: dict) -> None:
        self.best, self.bad_evals, self.scale = d["best"], int(d["bad_evals"]), float(d["scale"])
