import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnncli.config import OptimizerConfig, ScheduleConfig
from cnncli.train.optim import PlateauController, build_optimizer, build_schedule, decay_mask


def lr_at(cfg, steps, base=0.1, spe=10, total=100):
    s = build_schedule(cfg, base, spe, total)
    return [float(s(jnp.int32(t))) for t in steps]


def test_step_schedule_divides_by_ten_at_epoch_milestones():
    cfg = ScheduleConfig(name="step", milestones=[3, 6])  # epochs of 10 steps
    assert lr_at(cfg, [0, 29, 30, 59, 60, 99]) == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_step_schedule_in_steps_he_cifar_recipe():
    cfg = ScheduleConfig(name="step", milestone_steps=[32000, 48000])
    got = lr_at(cfg, [0, 31999, 32000, 47999, 48000, 63999], total=64000)
    assert got == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_cosine_with_warmup():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10)
    got = lr_at(cfg, [0, 4, 9, 10, 55, 100])
    # warmup: base * (t+1)/10; cosine over the 90 steps after it
    assert got == pytest.approx([0.01, 0.05, 0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)), 0.0], abs=1e-7)


def test_polynomial():
    cfg = ScheduleConfig(name="polynomial", power=2.0, final_lr=0.0)
    assert lr_at(cfg, [0, 50, 100]) == pytest.approx([0.1, 0.1 * 0.25, 0.0])


def test_plateau_controller_divides_after_patience():
    p = PlateauController(mode="max", patience=2, factor=0.1, min_scale=0.001)
    scales = [p.update(v) for v in [0.5, 0.6, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7, 0.7]]
    assert scales == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01])
    q = PlateauController(mode="max", patience=2, factor=0.1, min_scale=0.001)
    q.load_state_dict(p.state_dict())
    assert q.update(0.7) == p.update(0.7)


def test_sgd_weight_decay_is_l2_on_the_gradient():
    params = {"conv": {"kernel": jnp.array([1.0, -2.0]), "bias": jnp.array([3.0])}}
    grads = {"conv": {"kernel": jnp.array([0.5, 0.5]), "bias": jnp.array([0.5])}}
    cfg = OptimizerConfig(name="sgd", lr=0.1, momentum=0.0, weight_decay=0.01, decay_norm_and_bias=False)
    tx = build_optimizer(cfg, lambda s: 0.1)
    updates, _ = tx.update(grads, tx.init(params), params)
    # kernel: -lr * (g + wd * w); bias excluded from decay
    assert np.allclose(updates["conv"]["kernel"], -0.1 * (np.array([0.5, 0.5]) + 0.01 * np.array([1.0, -2.0])))
    assert np.allclose(updates["conv"]["bias"], [-0.05])
    assert decay_mask(params) == {"conv": {"kernel": True, "bias": False}}


def test_clip_by_global_norm():
    params = {"w": jnp.zeros(2)}
    cfg = OptimizerConfig(name="sgd", lr=1.0, momentum=0.0, clip_grad_norm=1.0)
    tx = build_optimizer(cfg, lambda s: 1.0)
    updates, _ = tx.update({"w": jnp.array([3.0, 4.0])}, tx.init(params), params)
    assert np.allclose(updates["w"], [-0.6, -0.8])


def test_adamw_decay_is_decoupled():
    params = {"w": jnp.array([2.0])}
    cfg = OptimizerConfig(name="adamw", lr=0.1, weight_decay=0.5)
    tx = build_optimizer(cfg, lambda s: 0.1)
    updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
    # zero gradient: only the decoupled decay acts, -lr * wd * w
    assert np.allclose(updates["w"], [-0.1 * 0.5 * 2.0])
    assert isinstance(tx, optax.GradientTransformation)
