"""cnn's default XLA:CPU flags: added only where safe, never over the user's, never an unknown one."""

import os
import subprocess
import sys

import pytest

from cnncli import xla_flags
from cnncli.xla_flags import CPU_DEFAULTS, apply_defaults, jaxlib_knows
from tests.three_steps import run_three_steps, weight_spread

FLAG = CPU_DEFAULTS[0][0]


def _fresh(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "CNN_XLA_DEFAULTS")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=120,
                          check=False)


def test_jaxlib_knows_real_flags_and_not_made_up_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cnn"))
    assert jaxlib_knows("xla_force_host_platform_device_count")  # a flag every jaxlib has
    assert not jaxlib_knows("xla_cpu_no_such_flag_in_any_jaxlib")
    cached = (tmp_path / "cnn" / "xla" / "flags.json").read_text()
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


def test_importing_cnn_sets_nothing_and_the_call_sets_them_before_jax_starts():
    code = ("import os, cnncli, cnncli.models, cnncli.train.step, jax, jax.numpy as jnp; "
            "print(repr(os.environ.get('XLA_FLAGS'))); cnncli.apply_cpu_defaults(kernels=False); "
            "jax.block_until_ready(jnp.ones(3) + 1); print(os.environ.get('XLA_FLAGS', ''))")
    proc = _fresh(code, JAX_PLATFORMS="cpu")
    assert proc.returncode == 0, proc.stderr
    imported, applied = proc.stdout.splitlines()
    assert imported == "None"  # importing cnn left XLA_FLAGS alone
    assert (FLAG in applied) == jaxlib_knows(FLAG)
    off = _fresh(code, JAX_PLATFORMS="cpu", CNN_XLA_DEFAULTS="0")
    assert off.returncode == 0 and FLAG not in off.stdout


def test_too_late_once_jax_has_a_backend():
    proc = _fresh("import os, jax; jax.devices(); import cnncli; cnncli.apply_cpu_defaults(kernels=False); "
                  "print(repr(os.environ.get('XLA_FLAGS')))",
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
    proc = _fresh(code, JAX_PLATFORMS="cpu", CNN_XLA_DEFAULTS="0", CNN_CACHE_DIR=str(tmp_path / "cnn"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] None"


@pytest.mark.slow
def test_default_flags_give_the_losses_of_xla_default():
    """The ResNet-20 training step (augmentation, BatchNorm, SGD with momentum and weight decay) under
    cnn's flags equals the one under XLA's own defaults within float32 rounding, as three steps at
    lr 0.1 amplify it: its losses to 1e-4 (measured: 2.2e-5 at the third), and its weights no further
    from XLA's than XLA's own are from a run whose initial weights moved by one rounding step (a
    median 2.3e-4 per leaf)."""
    import numpy as np

    # the flag concerns XLA's own convolutions: oneDNN's stay out of both sides
    runs = {name: run_three_steps(CNN_ONEDNN="0", **env) for name, env in
            (("cnn", {"CNN_XLA_DEFAULTS": "1"}), ("xla", {"CNN_XLA_DEFAULTS": "0"}),
             ("xla_moved", {"CNN_XLA_DEFAULTS": "0", "PERTURB": "1"}))}
    assert (FLAG in runs["cnn"]["flags"]) == jaxlib_knows(FLAG) and FLAG not in runs["xla"]["flags"]
    np.testing.assert_allclose(runs["cnn"]["losses"][:2], runs["xla"]["losses"][:2], rtol=1e-6)
    np.testing.assert_allclose(runs["cnn"]["losses"], runs["xla"]["losses"], rtol=1e-4)
    yardstick = weight_spread(runs["xla_moved"], runs["xla"])
    assert 0 < yardstick < 1e-3  # the yardstick itself is rounding-sized
    assert weight_spread(runs["cnn"], runs["xla"]) <= 3 * yardstick

