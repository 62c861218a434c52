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


# ------------------------------------------------------------------ weight decay on real models

def expected_decay(model) -> dict[tuple, bool]:
    """Which parameters weight decay should reach, from the module types alone: the kernel of a
    convolution or dense layer yes; its bias and every parameter of a norm layer no."""
    from flax import nnx

    norms = (nnx.BatchNorm, nnx.LayerNorm, nnx.GroupNorm, nnx.RMSNorm)
    nodes = dict(nnx.iter_graph(model))
    expected = {}
    for path, node in nodes.items():
        if not isinstance(node, nnx.Param):
            continue
        owner = nodes[path[:-1]]
        if isinstance(owner, norms):
            expected[path] = False
        elif isinstance(owner, (nnx.Conv, nnx.Linear)):
            expected[path] = node is owner.kernel
        else:
            raise AssertionError(f"parameter {path} of an unexpected {type(owner).__name__}")
    return expected


def flat(state) -> dict[tuple, object]:
    """Leaves of an nnx.State keyed by their module path (the Variable's `.value` step dropped)."""
    import jax

    return {tuple(e.key for e in path if isinstance(e, jax.tree_util.DictKey)): leaf
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


@pytest.mark.parametrize("name,shape", [("resnet18", (64, 64, 3)), ("resnet20", (16, 16, 3)),
                                        ("plain20", (16, 16, 3)), ("vgg11", (32, 32, 3)),
                                        ("vgg11_bn", (32, 32, 3)), ("alexnet", (227, 227, 3))])
def test_decay_mask_excludes_every_bias_and_norm_parameter_of_each_family(name, shape):
    from cnncli.models.registry import create_model
    from cnncli.train.state import split_model

    model = create_model(name, num_classes=5, input_shape=shape, abstract=True, check_input=False)
    expected = expected_decay(model)
    _, params, _ = split_model(model)
    mask = flat(decay_mask(params))
    assert mask == expected
    assert any(expected.values()) and not all(expected.values())


@pytest.fixture(scope="module")
def resnet20_params():
    """Expected decay and non-zero parameter values (BatchNorm biases start at 0) of a small ResNet-20."""
    import jax

    from cnncli.models.registry import create_model
    from cnncli.train.state import split_model

    model = create_model("resnet20", num_classes=3, input_shape=(16, 16, 3), abstract=True, check_input=False)
    _, params, _ = split_model(model)  # shapes only; the values are drawn here
    rng = np.random.default_rng(0)
    return expected_decay(model), jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("decay_norm_and_bias", [True, False])
def test_one_step_decays_norm_and_bias_only_when_asked(resnet20_params, opt, decay_norm_and_bias):
    """With a zero gradient, one SGD (coupled L2) or AdamW (decoupled) step changes a parameter
    only through weight decay: w -> w * (1 - lr * wd), or not at all when it is masked."""
    import jax

    expected, params = resnet20_params
    lr, wd = 0.1, 0.01
    cfg = OptimizerConfig(name=opt, lr=lr, weight_decay=wd, decay_norm_and_bias=decay_norm_and_bias)
    tx = build_optimizer(cfg, lambda s: lr)
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, _ = jax.jit(tx.update)(zero, tx.init(params), params)
    before, after = flat(params), flat(optax.apply_updates(params, updates))
    kinds = set()
    for path, w in before.items():
        decays = expected[path] or decay_norm_and_bias
        kinds.add((path[-1], decays))
        if decays:
            np.testing.assert_allclose(after[path], np.asarray(w) * (1 - lr * wd), rtol=1e-6, err_msg=str(path))
        else:
            np.testing.assert_array_equal(after[path], w, err_msg=str(path))
    # kernels always decayed; BatchNorm scale / bias and the dense bias follow the flag
    assert kinds == {("kernel", True), ("scale", decay_norm_and_bias), ("bias", decay_norm_and_bias)}
