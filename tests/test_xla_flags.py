"""cnn's default XLA:CPU flags: added only where safe, never over the user's, never an unknown one."""

import os
import subprocess
import sys


from cnncli import xla_flags
from cnncli.xla_flags import CPU_DEFAULTS, apply_defaults, jaxlib_knows

FLAG = CPU_DEFAULTS[0][0]


def _fresh(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CNN_XLA_DEFAULTS")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120,
                          check=False)


def test_jaxlib_knows_real_flags_and_not_made_up_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert jaxlib_knows("xla_force_host_platform_device_count")  # a flag every jaxlib has
    assert not jaxlib_knows("xla_cpu_no_such_flag_in_any_jaxlib")
    cached = (tmp_path / "cnn" / "xla_flags.json").read_text()
    assert "xla_cpu_no_such_flag_in_any_jaxlib" in cached
    assert not jaxlib_knows("xla_cpu_no_such_flag_in_any_jaxlib")  # answered from the cache


def test_a_value_this_jaxlib_cannot_parse_is_not_set(monkeypatch):
    """The flag alone is not enough: XLA aborts on a value naming an enum it lacks too."""
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    monkeypatch.setattr(xla_flags, "CPU_DEFAULTS", ((FLAG, "dot", ("LIBRARY_FUSION_TYPE_NO_SUCH_TYPE",), ""),))
    env = {"JAX_PLATFORMS": "cpu"}
    assert apply_defaults(env) == [] and "XLA_FLAGS" not in env


def test_defaults_are_added_only_where_safe(monkeypatch):
    monkeypatch.setattr(xla_flags, "_backend_started", lambda: False)
    monkeypatch.setattr(xla_flags, "jaxlib_knows", lambda name: True)
    value = f"--{FLAG}={CPU_DEFAULTS[0][1]}"
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert apply_defaults(env) == [value]
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {value}"
    assert apply_defaults(env) == []  # idempotent
    mine = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--{FLAG}="}
    assert apply_defaults(mine) == [] and mine["XLA_FLAGS"] == f"--{FLAG}="  # the user's own value wins
    for env in ({"JAX_PLATFORMS": "cuda"}, {"JAX_PLATFORMS": "tpu,cpu"}, {"JAX_PLATFORMS": "cpu", "CNN_XLA_DEFAULTS": "0"}):
        assert apply_defaults(env) == [] and "XLA_FLAGS" not in env
    monkeypatch.setattr(xla_flags, "jaxlib_knows", lambda name: False)
    env = {"JAX_PLATFORMS": "cpu"}
    assert apply_defaults(env) == [] and "XLA_FLAGS" not in env


def test_importing_cnn_sets_them_before_jax_starts_and_jax_runs():
    code = ("import os, cnncli, jax, jax.numpy as jnp; jax.block_until_ready(jnp.ones(3) + 1); "
            "print(os.environ.get('XLA_FLAGS', ''))")
    proc = _fresh(code, JAX_PLATFORMS="cpu")
    assert proc.returncode == 0, proc.stderr
    assert (FLAG in proc.stdout) == jaxlib_knows(FLAG)
    off = _fresh(code, JAX_PLATFORMS="cpu", CNN_XLA_DEFAULTS="0")
    assert off.returncode == 0 and FLAG not in off.stdout


def test_too_late_once_jax_has_a_backend():
    proc = _fresh("import os, jax; jax.devices(); import cnncli; print(repr(os.environ.get('XLA_FLAGS')))",
                  JAX_PLATFORMS="cpu")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "None"


def test_an_unknown_flag_is_never_set(tmp_path):
    """XLA aborts on a flag it does not know: a default this jaxlib lacks must not reach it."""
    bogus = "xla_cpu_no_such_flag_in_any_jaxlib"
    aborts = _fresh("import jax; jax.devices()", JAX_PLATFORMS="cpu", XLA_FLAGS=f"--{bogus}=1")
    assert aborts.returncode != 0  # what a blind default would do to every cnn command
    code = ("import os, cnncli.xla_flags as x; os.environ.pop('CNN_XLA_DEFAULTS'); "
            f"x.CPU_DEFAULTS = (('{bogus}', '1', (), ''),); added = x.apply_defaults(); "
            "import jax; jax.devices(); print(added, repr(os.environ.get('XLA_FLAGS')))")
    proc = _fresh(code, JAX_PLATFORMS="cpu", CNN_XLA_DEFAULTS="0", XDG_CACHE_HOME=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] None"


STEPS = r"""
import json, numpy as np, jax
from cnncli.config import AugmentConfig, OptimizerConfig, ScheduleConfig
from cnncli.models import create_model
from cnncli.train.optim import build_optimizer, build_schedule
from cnncli.train.state import init_train_state, split_model
from cnncli.train.step import make_train_step
parts, params, stats = split_model(create_model("resnet20", num_classes=10, input_shape=(32, 32, 3), seed=1))
sched = build_schedule(ScheduleConfig(), 0.1, 1, 1)
tx = build_optimizer(OptimizerConfig(lr=0.1, momentum=0.9, weight_decay=5e-3), sched)
step = jax.jit(make_train_step(parts, tx, sched, num_classes=10, augment=AugmentConfig(random_crop_padding=4, flip=True),
                               mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], seed=0))
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 16).astype(np.int32)
import os
if os.environ.get("PERTURB"):  # each weight moved by about one float32 rounding step
    noise = np.random.default_rng(1)
    params = jax.tree.map(lambda p: p * (1 + 1e-7 * noise.standard_normal(p.shape)).astype(np.float32), params)
state, losses = init_train_state(params, stats, tx, ema=False), []
for _ in range(3):
    state, m = step(state, x, y)
    losses.append(float(m["loss"]))
print(json.dumps({"flags": __import__("os").environ.get("XLA_FLAGS", ""), "losses": losses,
                  "params": [np.asarray(p).ravel()[:64].tolist() for p in jax.tree.leaves(state.params)]}))
"""


def test_default_flags_give_the_losses_of_xla_default():
    """The ResNet-20 training step (augmentation, BatchNorm, SGD with momentum and weight decay) under
    cnn's flags equals the one under XLA's own defaults within float32 rounding, as three steps at
    lr 0.1 amplify it: its losses to 1e-4 (measured: 2.2e-5 at the third), and its weights no further
    from XLA's than XLA's own are from a run whose initial weights moved by one rounding step (a
    median 2.3e-4 per leaf)."""
    import json

    import numpy as np

    runs = {}
    for name, env in (("cnn", {"CNN_XLA_DEFAULTS": "1"}), ("xla", {"CNN_XLA_DEFAULTS": "0"}),
                      ("xla_moved", {"CNN_XLA_DEFAULTS": "0", "PERTURB": "1"})):
        proc = _fresh(STEPS, JAX_PLATFORMS="cpu", CNN_ONEDNN="0", **env)  # the flag concerns XLA's convolutions
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (FLAG in runs["cnn"]["flags"]) == jaxlib_knows(FLAG) and FLAG not in runs["xla"]["flags"]
    np.testing.assert_allclose(runs["cnn"]["losses"][:2], runs["xla"]["losses"][:2], rtol=1e-6)
    np.testing.assert_allclose(runs["cnn"]["losses"], runs["xla"]["losses"], rtol=1e-4)

    def spread(other):
        return np.median([np.max(np.abs(np.subtract(a, b))) / np.max(np.abs(b))
                          for a, b in zip(runs[other]["params"], runs["xla"]["params"])])

    assert 0 < spread("xla_moved") < 1e-3  # the yardstick itself is rounding-sized
    assert spread("cnn") <= 3 * spread("xla_moved")

