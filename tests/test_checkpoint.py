import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnncli.checkpoint import CheckpointManager, find_checkpoint_dir
from cnncli.config import OptimizerConfig
from cnncli.errors import CheckpointError
from cnncli.models import create_model
from cnncli.train.optim import build_optimizer
from cnncli.train.state import init_train_state, split_model


def make_state(seed):
    model = create_model("resnet20", width=0.25, num_classes=10, input_shape=(16, 16, 1), seed=seed)
    _, params, stats = split_model(model)
    tx = build_optimizer(OptimizerConfig(), lambda s: 0.1)
    state = init_train_state(params, stats, tx, ema=False)
    # make the optimizer state non-trivial
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.25), params)
    _, opt_state = tx.update(grads, state.opt_state, params)
    return state.replace(opt_state=opt_state, step=jnp.int32(7))


def test_round_trip_is_bitwise(tmp_path):
    state = make_state(0)
    mgr = CheckpointManager(tmp_path / "checkpoints")
    model_tree = {"params": state.params, "batch_stats": state.batch_stats}
    train_tree = {"opt_state": state.opt_state, "step": state.step}
    mgr.save(7, model_tree, train_tree, {"step": 7, "note": "x"}, {"val_accuracy": 0.5, "val_loss": 1.0})
    mgr.close()

    target = make_state(1)  # different values, same structure
    mgr2 = CheckpointManager(tmp_path / "checkpoints", read_only=True)
    assert mgr2.steps() == [7] and mgr2.latest_step() == 7 and mgr2.best_step() == 7
    m, t, meta = mgr2.restore(7, {"params": target.params, "batch_stats": target.batch_stats},
                              {"opt_state": target.opt_state, "step": target.step})
    assert meta == {"step": 7, "note": "x"}
    for a, b in zip(jax.tree.leaves(model_tree) + jax.tree.leaves(train_tree),
                    jax.tree.leaves(m) + jax.tree.leaves(t)):
        assert a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    assert not all(np.array_equal(np.asarray(a), np.asarray(b))
                   for a, b in zip(jax.tree.leaves(target.params), jax.tree.leaves(m["params"])))


def test_keeps_latest_and_best(tmp_path):
    state = make_state(0)
    mgr = CheckpointManager(tmp_path / "ck", keep_last=1, keep_best=1)
    tree = {"params": state.params}
    for step, acc in [(1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7)]:
        mgr.save(step, tree, {"step": state.step}, {"step": step}, {"val_accuracy": acc, "val_loss": 1 - acc})
    mgr.close()
    mgr = CheckpointManager(tmp_path / "ck", read_only=True)
    assert mgr.steps() == [2, 4]  # best (0.9) and latest
    assert mgr.best_step() == 2


def test_find_checkpoint_dir(tmp_path):
    with pytest.raises(CheckpointError, match="no such run"):
        find_checkpoint_dir(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        find_checkpoint_dir(tmp_path)
