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
    """lr(step) for 0-based optimizer steps, from optax's schedule constructors.

    Linear warmup from base/warmup to base over the warmup steps, then the main schedule
    (which counts its steps from the end of warmup):
    - constant / plateau: base (plateau multiplies by a host-controlled factor, see PlateauController)
    - step: base * gamma ** (number of milestones <= step); milestones are steps of the whole run
    - cosine: from base to final_lr over the steps after warmup
    - polynomial: base -> final_lr with the given power over the steps after warmup
    """
    warm = warmup_steps(cfg, steps_per_epoch)
    decay_steps = max(1, total_steps - warm)
    if cfg.name in ("constant", "plateau"):
        main = optax.constant_schedule(base_lr)
    elif cfg.name == "step":
        scales: dict[int, float] = {}
        for m in milestone_steps(cfg, steps_per_epoch):  # a milestone given twice divides twice
            scales[m - warm] = scales.get(m - warm, 1.0) * cfg.gamma
        main = optax.piecewise_constant_schedule(base_lr, scales)
    elif cfg.name == "cosine":
        main = optax.cosine_decay_schedule(base_lr, decay_steps, alpha=cfg.final_lr / base_lr)
    elif cfg.name == "polynomial":
        main = optax.polynomial_schedule(base_lr, cfg.final_lr, cfg.power, decay_steps)
    else:  # validated in config
        raise ValueError(cfg.name)
    if warm > 0:
        main = optax.join_schedules([optax.linear_schedule(base_lr / warm, base_lr, warm - 1), main], [warm])

    def schedule(step):
        return jnp.asarray(main(jnp.asarray(step, jnp.int32)), jnp.float32)

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
