"""cnncli.kernels.max_pool: values and gradient against a NumPy loop and against jax's own rule."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnncli.kernels import maxpool
from cnncli.kernels.maxpool import max_pool


@pytest.fixture(autouse=True)
def scatter_here(monkeypatch):
    """The scatter-add gradient on whatever backend runs the tests (cnn uses it on the CPU only)."""
    monkeypatch.setattr(maxpool, "SCATTER_BACKENDS", (jax.default_backend(),))

# (kernel, stride, padding, input H x W): ResNet's stem pool, AlexNet's overlapping pool with a row
# left out, VGG's 2x2, a stride-1 pool, uneven kernels and strides, and a stride past the kernel
# with padding (cells no window reads).
CASES = [((3, 3), (2, 2), (1, 1), (9, 10)), ((3, 3), (2, 2), (0, 0), (11, 11)), ((2, 2), (2, 2), (0, 0), (7, 8)),
         ((3, 3), (1, 1), (1, 1), (6, 5)), ((2, 3), (1, 2), (1, 0), (7, 9)), ((1, 1), (2, 2), (0, 0), (5, 5)),
         ((2, 2), (3, 3), (1, 1), (8, 7))]


def numpy_pool(x, kernel, stride, padding):
    """Windows scanned in raster order; each window's gradient (of the sum of y * dy) to its first maximum."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = x.shape
    xp = np.full((n, h + 2 * ph, w + 2 * pw, c), -np.inf, x.dtype)
    xp[:, ph:ph + h, pw:pw + w] = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = np.empty((n, oh, ow, c), x.dtype)
    first = np.empty((n, oh, ow, c, 2), int)
    for b, a, bb, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        win = xp[b, a * sh:a * sh + kh, bb * sw:bb * sw + kw, ch]
        rows, cols = np.arange(kh)[:, None] + a * sh - ph, np.arange(kw)[None, :] + bb * sw - pw
        real = np.flatnonzero((rows >= 0) & (rows < h) & (cols >= 0) & (cols < w))  # padded cells never win
        k = int(real[np.argmax(win.flat[real])])  # NumPy's argmax: the first maximum (or NaN) in raster order
        y[b, a, bb, ch] = win.flat[k]
        first[b, a, bb, ch] = (a * sh + k // kw - ph, bb * sw + k % kw - pw)
    return y, first


def numpy_grad(first, dy, shape):
    dx = np.zeros(shape, np.float64)
    n, oh, ow, c = dy.shape
    for b, a, bb, ch in itertools.product(range(n), range(oh), range(ow), range(c)):
        i, j = first[b, a, bb, ch]
        dx[b, i, j, ch] += dy[b, a, bb, ch]
    return dx


@pytest.mark.parametrize("kernel,stride,padding,hw", CASES)
@pytest.mark.parametrize("ties", ["none", "relu", "-inf"])
def test_values_and_gradient_match_a_numpy_loop(kernel, stride, padding, hw, ties):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    if ties == "relu":  # a ReLU's output, coarsely quantised: most windows hold their maximum more than once
        x = np.maximum(np.round(x * 2) / 2, 0).astype(np.float32)
    if ties == "-inf":  # windows whose real cells are all -inf: the padding beside them must not win
        x[x < 0.8] = -np.inf
    y_ref, first = numpy_pool(x, kernel, stride, padding)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)

    y, vjp = jax.vjp(lambda t: max_pool(t, kernel, stride, padding), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), y_ref)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda t: max_pool(t, kernel, stride, padding))(x)), y_ref)
    dx = np.asarray(vjp(jnp.asarray(dy))[0])
    # A cell inside several windows adds their shares: float32 rounding of that sum, nothing more.
    np.testing.assert_allclose(dx, numpy_grad(first, dy, x.shape), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding,hw", CASES[:3])
def test_gradient_equals_jaxs_own_rule_on_a_relu_output(kernel, stride, padding, hw):
    """flax's max_pool (select-and-scatter under jax.grad) breaks ties the same way."""
    x = jax.nn.relu(jax.random.normal(jax.random.key(1), (4, *hw, 8)))
    pads = tuple((p, p) for p in padding)

    def loss(pool, t):
        return jnp.sum(pool(t) * jnp.arange(1.0, 1 + pool(t).size).reshape(pool(t).shape))

    ours = jax.grad(lambda t: loss(lambda u: max_pool(u, kernel, stride, padding), t))(x)
    theirs = jax.grad(lambda t: loss(lambda u: nnx.max_pool(u, kernel, stride, pads), t))(x)
    assert float(jnp.mean(x == 0)) > 0.3  # the ties are there
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-6, atol=0)


def test_a_window_of_more_than_128_offsets_and_an_all_minus_infinity_batch():
    """The winner's offset outgrows int8 (a 12x12 window: 144 offsets); -inf everywhere sends each window's
    gradient to its first real cell, never across the padding into a neighbouring cell or image."""
    rng = np.random.default_rng(5)
    for case, kernel, stride, padding in (
            (rng.standard_normal((2, 13, 13, 2)).astype(np.float32), (12, 12), (1, 1), (0, 0)),
            (rng.standard_normal((2, 9, 17, 2)).astype(np.float32), (8, 16), (1, 1), (0, 0)),  # 128: int8's last
            (np.full((2, 5, 6, 1), -np.inf, np.float32), (3, 3), (2, 2), (1, 1))):
        y_ref, first = numpy_pool(case, kernel, stride, padding)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        # one compiled function: op by op, a window of 144 offsets dispatches some 600 small programs
        y, dx = jax.jit(lambda t, g: (lambda out: (out[0], out[1](g)[0]))(
            jax.vjp(lambda u: max_pool(u, kernel, stride, padding), t)))(jnp.asarray(case), jnp.asarray(dy))
        np.testing.assert_array_equal(np.asarray(y), y_ref)
        np.testing.assert_allclose(np.asarray(dx), numpy_grad(first, dy, case.shape), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="padding"):
        max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2), (1, 1), (2, 0))


def test_a_nan_in_a_window_is_its_maximum_also_under_differentiation():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 2, 0].set(jnp.nan)
    y, vjp = jax.vjp(lambda t: max_pool(t, (2, 2), (2, 2), (0, 0)), x)
    assert np.isnan(np.asarray(y)[0, 0, 1, 0]) and np.isnan(np.asarray(max_pool(x, (2, 2), (2, 2), (0, 0)))[0, 0, 1, 0])
    assert int(jnp.isnan(y).sum()) == 1
    dx = np.asarray(vjp(jnp.ones_like(y))[0])
    assert dx[0, 1, 2, 0] == 1.0 and dx.sum() == 4.0  # the NaN's window sends its gradient to the NaN


def test_bfloat16_keeps_its_dtype_and_values():
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 4), jnp.bfloat16)
    y, vjp = jax.vjp(lambda t: max_pool(t, (3, 3), (2, 2), (1, 1)), x)
    dy = jax.random.normal(jax.random.key(3), y.shape, jnp.bfloat16)
    dx = vjp(dy)[0]
    assert y.dtype == jnp.bfloat16 and dx.dtype == jnp.bfloat16
    y_ref, first = numpy_pool(np.asarray(x, np.float32), (3, 3), (2, 2), (1, 1))
    np.testing.assert_array_equal(np.asarray(y, np.float32), y_ref)
    # Each cell's share added in bfloat16: within bfloat16's rounding of the float64 sum.
    np.testing.assert_allclose(np.asarray(dx, np.float32), numpy_grad(first, np.asarray(dy, np.float32), x.shape),
                               rtol=2 ** -7, atol=1e-6)


def test_other_backends_keep_jaxs_own_rule(monkeypatch):
    """Where the scatter-add was not measured, the pool is reduce_window differentiated by jax: flax's gradient."""
    monkeypatch.setattr(maxpool, "SCATTER_BACKENDS", ())
    x = jax.random.normal(jax.random.key(4), (2, 9, 9, 3))
    ours = jax.grad(lambda t: jnp.sum(max_pool(t, (3, 3), (2, 2), (1, 1)) ** 2))(x)
    theirs = jax.grad(lambda t: jnp.sum(nnx.max_pool(t, (3, 3), (2, 2), ((1, 1), (1, 1))) ** 2))(x)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    assert jax.jvp(lambda t: max_pool(t, (3, 3), (2, 2), (1, 1)), (x,), (x,))[1].shape == (2, 5, 5, 3)


SHARDED = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from cnncli.kernels import maxpool
maxpool.SCATTER_BACKENDS = (jax.default_backend(),)
sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)), P("data"))
grad = lambda x, dy: jax.vjp(lambda t: maxpool.max_pool(t, (3, 3), (2, 2), (1, 1)), x)[1](dy)[0]
x = jax.random.normal(jax.random.key(0), (4, 10, 10, 3)); dy = jax.random.normal(jax.random.key(1), (4, 5, 5, 3))
sharded = jax.jit(grad, in_shardings=(sharding, sharding), out_shardings=sharding)
compiled = sharded.lower(jax.device_put(x, sharding), jax.device_put(dy, sharding)).compile().as_text()
print([op for op in ("all-gather", "all-reduce", "collective-permute", "all-to-all") if op in compiled])
print(bool(jnp.array_equal(sharded(jax.device_put(x, sharding), jax.device_put(dy, sharding)), jax.jit(grad)(x, dy))))
"""


@pytest.mark.slow  # a second process with two devices
def test_a_batch_sharded_gradient_needs_no_collective():
    """Each device scatters its own images: no all-gather of every index and gradient (a flat scatter over
    the global batch had two per pool), and the same gradient as on one device."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["[]", "True"], proc.stdout
