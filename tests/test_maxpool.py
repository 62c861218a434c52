"""cnncli.kernels.max_pool: values and gradient against a NumPy loop and against jax's own rule."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cnncli.kernels.maxpool import max_pool

# (kernel, stride, padding, input H x W): ResNet's stem pool, AlexNet's overlapping pool with a row
# left out, VGG's 2x2, a stride-1 pool, and uneven kernels and strides.
CASES = [((3, 3), (2, 2), (1, 1), (9, 10)), ((3, 3), (2, 2), (0, 0), (11, 11)), ((2, 2), (2, 2), (0, 0), (7, 8)),
         ((3, 3), (1, 1), (1, 1), (6, 5)), ((2, 3), (1, 2), (1, 0), (7, 9)), ((1, 1), (2, 2), (0, 0), (5, 5))]


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
    x = rng.standard_normal((2, 13, 13, 2)).astype(np.float32)
    for case in (x, np.full((2, 5, 6, 1), -np.inf, np.float32)):
        kernel, stride, padding = ((12, 12), (1, 1), (0, 0)) if case is x else ((3, 3), (2, 2), (1, 1))
        y_ref, first = numpy_pool(case, kernel, stride, padding)
        dy = rng.standard_normal(y_ref.shape).astype(np.float32)
        y, vjp = jax.vjp(lambda t: max_pool(t, kernel, stride, padding), jnp.asarray(case))
        np.testing.assert_array_equal(np.asarray(y), y_ref)
        np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), numpy_grad(first, dy, case.shape),
                                   rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="padding"):
        max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2), (1, 1), (2, 0))


def test_a_nan_in_a_window_is_its_maximum_also_under_differentiation():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 1, 2, 0].set(jnp.nan)
    y, vjp = jax.vjp(lambda t: max_pool(t, (2, 2), (2, 2), (0, 0)), x)
    assert np.isnan(np.asarray(y)[0, 0, 1, 0]) and np.isnan(np.asarray(max_pool(x, (2, 2), (2, 2), (0, 0)))[0, 0, 1, 0])
    assert int(jnp.isnan(y).sum()) == 1
    dx = np.asarray(vjp(jnp.ones_like(y))[0])
    assert dx[0, 1, 2, 0] == 1.0 and dx.sum() == 4.0  # the NaN's window sends its gradient to the NaN


def test_bfloat16_keeps_its_dtype():
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 4), jnp.bfloat16)
    y, vjp = jax.vjp(lambda t: max_pool(t, (3, 3), (2, 2), (1, 1)), x)
    assert y.dtype == jnp.bfloat16 and vjp(jnp.ones_like(y))[0].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32),
                                  np.asarray(nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))), np.float32))
