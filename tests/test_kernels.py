"""oneDNN's convolutions (cnncli.kernels) against lax's: forward, both gradients, a whole training
step, and the fallback wherever the oneDNN path does not apply."""

import importlib.metadata
import os
import platform
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnncli.kernels import (
    conv_general_dilated,
    kernels_in_use,
    onednn_status,
    xla_kernels,
)
from tests.three_steps import run_three_steps, weight_spread

NHWC = ("NHWC", "HWIO", "NHWC")
ONEDNN_PLATFORM = sys.platform == "linux" and platform.machine() == "x86_64"


@pytest.fixture(scope="module", autouse=True)
def onednn_here():
    """Where the wheels exist the oneDNN path must be there: a comparison of lax with itself proves nothing."""
    if not ONEDNN_PLATFORM:
        pytest.skip(f"no oneDNN wheels for {sys.platform} {platform.machine()}")
    if not _installed("onednn-cpu-gomp"):
        pytest.skip("the oneDNN wheels are not installed (the `cpu` extra)")
    if jax.default_backend() != "cpu":
        pytest.skip(f"the oneDNN kernels are for the CPU; jax runs on {jax.default_backend()}")
    usable, why = onednn_status()
    assert usable, why
    assert jax.device_count() == 1


def _installed(dist: str) -> bool:
    try:
        return importlib.metadata.distribution(dist) is not None
    except importlib.metadata.PackageNotFoundError:
        return False


def _targets(fn, *args) -> set[str]:
    text = jax.jit(fn).lower(*args).as_text()
    return {name for name in ("cnn_onednn_conv_forward", "cnn_onednn_conv_backward_data",
                              "cnn_onednn_conv_backward_weights", "convolution") if name in text}


def _rel(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


GEOMETRIES = [  # batch, height, width, in, out, kernel, stride, padding
    (4, 32, 32, 16, 16, (3, 3), 1, ((1, 1), (1, 1))),  # ResNet-20 body
    (4, 32, 32, 16, 32, (3, 3), 2, ((1, 1), (1, 1))),  # ResNet-20 down-sampling
    (3, 17, 17, 16, 32, (1, 1), 2, ((0, 0), (0, 0))),  # projection shortcut, odd size
    (2, 56, 56, 3, 64, (7, 7), 2, ((3, 3), (3, 3))),  # ResNet stem
    (2, 67, 67, 3, 24, (11, 11), 4, ((2, 2), (2, 2))),  # AlexNet's first layer
    (2, 9, 13, 5, 7, (3, 5), 2, ((0, 1), (2, 0))),  # non-square, asymmetric padding
    (2, 10, 10, 4, 6, (3, 3), 1, "SAME"),
    (2, 10, 10, 4, 6, (3, 3), 3, "VALID"),
]


@pytest.mark.parametrize("n,h,w,cin,cout,kernel,stride,padding", GEOMETRIES)
def test_convolution_and_its_gradients_equal_lax(n, h, w, cin, cout, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((*kernel, cin, cout)) / np.sqrt(cin * np.prod(kernel)), jnp.float32)
    t = jnp.asarray(rng.standard_normal((n, 1, 1, cout)), jnp.float32)

    def loss(conv, x, k):
        y = conv(x, k, (stride, stride), padding, dimension_numbers=NHWC)
        return jnp.sum(jnp.tanh(y) * t), y  # a gradient that differs per output position

    def grads(conv):
        return jax.jit(jax.value_and_grad(lambda x, k: loss(conv, x, k), argnums=(0, 1), has_aux=True))(x, k)

    (l1, y1), (dx1, dk1) = grads(conv_general_dilated)
    (l2, y2), (dx2, dk2) = grads(lax.conv_general_dilated)
    assert y1.shape == y2.shape
    assert _rel(y1, y2) < 1e-5
    assert _rel(dx1, dx2) < 1e-5
    assert _rel(dk1, dk2) < 2e-5
    assert float(l1) == pytest.approx(float(l2), rel=1e-5, abs=1e-5)
    used = _targets(jax.grad(lambda x, k: loss(conv_general_dilated, x, k)[0], argnums=(0, 1)), x, k)
    assert used == {"cnn_onednn_conv_forward", "cnn_onednn_conv_backward_data", "cnn_onednn_conv_backward_weights"}


def test_what_onednn_does_not_cover_stays_with_lax(monkeypatch):
    x = jnp.ones((2, 8, 8, 4), jnp.float32)
    k = jnp.ones((3, 3, 4, 4), jnp.float32)

    def conv(**kw):
        args = {"window_strides": (1, 1), "padding": ((1, 1), (1, 1)), "dimension_numbers": NHWC, **kw}
        return lambda x, k: conv_general_dilated(x, k, **args)

    assert _targets(conv(), x, k) == {"cnn_onednn_conv_forward"}
    assert _targets(conv(rhs_dilation=(2, 2)), x, k) == {"convolution"}
    assert _targets(conv(lhs_dilation=(2, 2)), x, k) == {"convolution"}
    assert _targets(conv(feature_group_count=2), x, k[:, :, :2]) == {"convolution"}
    assert _targets(conv(), x.astype(jnp.bfloat16), k.astype(jnp.bfloat16)) == {"convolution"}
    nchw = ("NCHW", "OIHW", "NCHW")
    assert _targets(conv(dimension_numbers=nchw), jnp.ones((2, 4, 8, 8)), jnp.ones((4, 4, 3, 3))) == {"convolution"}
    with xla_kernels():
        assert _targets(lambda x, k: conv()(x, k) * 2, x, k) == {"convolution"}
    monkeypatch.setenv("CNN_ONEDNN", "0")
    assert _targets(lambda x, k: conv()(x, k) * 3, x, k) == {"convolution"}
    assert kernels_in_use() == "XLA (turned off by CNN_ONEDNN=0)"


def test_vmap_over_a_leading_axis_equals_lax():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 4)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((3, 3, 4, 5)), jnp.float32)

    def per(conv):
        return jax.jit(jax.vmap(lambda xi: conv(xi, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)))(x)

    assert _rel(per(conv_general_dilated), per(lax.conv_general_dilated)) < 1e-5


def _run(code: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("CNN_ONEDNN", "XLA_FLAGS")}
    environ.update(JAX_PLATFORMS="cpu", **env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_training_step_with_onednn_equals_xla():
    """Three ResNet-20 steps (augmentation, BatchNorm, momentum, weight decay, lr 0.1): the losses agree
    to 1e-4, and the weights are no further from XLA's than XLA's own from a run whose initial weights
    moved by one float32 rounding step."""
    runs = {name: run_three_steps(**env) for name, env in
            (("onednn", {}), ("xla", {"CNN_ONEDNN": "0"}), ("xla_moved", {"CNN_ONEDNN": "0", "PERTURB": "1"}))}
    assert runs["onednn"]["kernels"].startswith("oneDNN 3.")
    assert runs["xla"]["kernels"].startswith("XLA")
    np.testing.assert_allclose(runs["onednn"]["losses"][:2], runs["xla"]["losses"][:2], rtol=1e-5)
    np.testing.assert_allclose(runs["onednn"]["losses"], runs["xla"]["losses"], rtol=1e-4)
    yardstick = weight_spread(runs["xla_moved"], runs["xla"])
    assert 0 < yardstick < 1e-3
    assert weight_spread(runs["onednn"], runs["xla"]) <= 3 * yardstick


FALLBACK = ("import jax.numpy as jnp, numpy as np, cnncli; from jax import lax\n"
            "done = cnncli.apply_cpu_defaults()\n"
            "from cnncli.kernels import conv_general_dilated, kernels_in_use\n"
            "x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 3)), jnp.float32)\n"
            "k = jnp.ones((3, 3, 3, 4))\n"
            "a = conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
            "b = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))\n"
            "print(done['kernels'] == kernels_in_use()); print(kernels_in_use()); print(bool((a == b).all()))")


@pytest.mark.slow
def test_a_failed_build_falls_back_to_lax_and_says_why(tmp_path):
    proc = _run(FALLBACK, CXX="/bin/false", CNN_CACHE_DIR=str(tmp_path / "cnn"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["True", "XLA (building the oneDNN handlers failed: no message)", "True"]
    assert proc.stderr.splitlines() == [
        "cnn: building the oneDNN handlers with false (a few seconds)",
        "cnn: convolutions run on XLA's own kernels: building the oneDNN handlers failed: no message"]
    assert not list((tmp_path / "cnn" / "kernels").glob("*"))  # no half-built library left behind


def test_no_compiler_falls_back_to_lax_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CXX"}
    environ = {**env, "JAX_PLATFORMS": "cpu", "PATH": str(tmp_path / "empty"), "CNN_CACHE_DIR": str(tmp_path / "cnn")}
    environ.pop("CNN_ONEDNN", None)
    proc = subprocess.run([sys.executable, "-c", FALLBACK], env=environ, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    why = "no C++ compiler (g++) to build the oneDNN handlers"
    assert proc.stdout.splitlines() == ["True", f"XLA ({why})", "True"]
    assert proc.stderr.splitlines() == [f"cnn: convolutions run on XLA's own kernels: {why}"]


def test_tracing_never_builds_or_loads(tmp_path):
    """Without apply_cpu_defaults() a Conv traces to XLA's own convolution and no compiler runs."""
    code = FALLBACK.replace("done = cnncli.apply_cpu_defaults()", "done = {'kernels': None}")
    marker = tmp_path / "compiler-ran"
    compiler = tmp_path / "g++"
    compiler.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    compiler.chmod(0o755)
    proc = _run(code, CXX=str(compiler), CNN_CACHE_DIR=str(tmp_path / "cnn"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[1:] == [
        "XLA (not loaded (cnncli.apply_cpu_defaults() loads them; the cnn command does))", "True"]
    assert not marker.exists() and proc.stderr == ""


@pytest.mark.slow
def test_an_unwritable_cache_builds_for_the_process_and_leaves_no_folder(tmp_path):
    (tmp_path / "cache").write_text("a file where cnn's cache folder would be")
    (tmp_path / "tmp").mkdir()
    proc = _run(FALLBACK, CNN_CACHE_DIR=str(tmp_path / "cache" / "cnn"), TMPDIR=str(tmp_path / "tmp"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[1].startswith("oneDNN 3.")
    assert proc.stderr.splitlines() == ["cnn: building the oneDNN handlers with g++ (a few seconds)"]
    assert list((tmp_path / "tmp").iterdir()) == []


NORM_SHAPES = [(8, 5, 6, 7), (16, 8, 8, 64), (1, 3, 3, 16)]


def _norm_grads(shape, force_xla: bool, train: bool = True):
    from flax import nnx

    from cnncli.models.layers import BatchNorm

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal(shape) * 3 + 1, jnp.float32)
    t = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    norm = BatchNorm(shape[-1], momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.linspace(0.5, 1.5, shape[-1])
    norm.bias[...] = jnp.linspace(-1, 1, shape[-1])
    norm.train() if train else norm.eval()
    graph, state = nnx.split(norm)

    def loss(state, x):
        m = nnx.merge(graph, state)
        return jnp.sum(jnp.tanh(m(x)) * t), nnx.state(m, nnx.BatchStat)

    fn = jax.value_and_grad(lambda s, x: loss(s, x), argnums=(0, 1), has_aux=True)
    if force_xla:
        with xla_kernels():
            return jax.jit(fn)(state, x), jax.jit(lambda s, x: fn(s, x)).lower(state, x).as_text()
    return jax.jit(fn)(state, x), jax.jit(fn).lower(state, x).as_text()


@pytest.mark.parametrize("shape", NORM_SHAPES)
def test_batch_norm_gradient_and_running_averages_equal_flax(shape):
    (ours, text), (flax_, flax_text) = _norm_grads(shape, False), _norm_grads(shape, True)
    assert "cnn_onednn_norm_backward" in text and "cnn_onednn" not in flax_text
    (loss_a, stats_a), grads_a = ours
    (loss_b, stats_b), grads_b = flax_
    assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-6)
    for a, b in zip(jax.tree.leaves(stats_a), jax.tree.leaves(stats_b)):  # running mean and variance
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    leaves_a, leaves_b = jax.tree.leaves(grads_a), jax.tree.leaves(grads_b)
    assert len(leaves_a) == len(leaves_b)
    # x, scale and bias have gradients; the running mean and variance are not inputs of the loss: zero
    assert sum(bool(np.any(np.asarray(b))) for b in leaves_b) == 3
    for a, b in zip(leaves_a, leaves_b):
        assert a.shape == b.shape
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))  # everywhere, the zero leaves exactly


def test_batch_norm_outside_training_stays_with_flax():
    assert "cnn_onednn" not in _norm_grads((4, 4, 4, 8), False, train=False)[1]


@pytest.mark.slow
def test_a_damaged_library_is_rebuilt_not_loaded(tmp_path):
    """Loading a truncated shared library can crash the process (SIGBUS): the build seals the file
    with its SHA-256 and a file that does not match it is built again."""
    code = "import cnncli; print(cnncli.apply_cpu_defaults()['kernels'])"
    first = _run(code, CNN_CACHE_DIR=str(tmp_path / "cnn"))
    assert first.returncode == 0 and first.stdout.strip().startswith("oneDNN"), first.stderr[-2000:]
    (library,) = (tmp_path / "cnn" / "kernels").glob("*.so")
    whole = library.read_bytes()
    library.write_bytes(whole[:1000])
    again = _run(code, CNN_CACHE_DIR=str(tmp_path / "cnn"))
    assert again.returncode == 0 and again.stdout.strip().startswith("oneDNN"), again.stderr[-2000:]
    assert len(library.read_bytes()) == len(whole)
