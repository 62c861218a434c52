"""Training-mode batch normalisation whose gradient is one oneDNN call on the CPU.

`batch_norm_train(x, scale, shift, eps)` normalises an NHWC float32 batch over N, H and W with
the batch's own statistics and returns (y, mean, biased variance), the statistics of
`batch_stats` (one pass, shifted: stable where |mean| >> std). The forward pass stays
in XLA, which fuses it with the ReLU and residual add around it (oneDNN's own forward measured
slower than XLA's fusions here); the backward pass, several passes over the data in XLA, is one
oneDNN call on both cores. The statistics come back without a gradient: they feed only the
running averages. `applies` says whether a layer's call may take this path; everything else
stays with flax's own BatchNorm.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnncli.kernels.onednn import onednn_applies


def batch_stats(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(mean, biased variance) of `x` over `axes`, in float32 or wider, in one pass over the data.

    Both are sums of d = x - s, s being the batch's first value of each channel (no gradient):
    the mean is s + E[d], the variance E[d^2] - E[d]^2. The data's own offset is taken out before
    squaring, so a channel whose mean is far from zero keeps its variance (flax's fast variance,
    E[x^2] - E[x]^2, cancels in float32: the output 0.8 std off at |mean|/std = 1000), while the
    two sums read `x` side by side, as the fast variance's do: no second pass after the mean (8.5%
    slower on a ResNet-50 GPU step). The shift goes to the two sums as two values, so that XLA:CPU
    subtracts it inside each sum instead of writing d out first (which took twice the time)."""
    x = jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32))
    first = tuple(slice(0, 1) if a in axes else slice(None) for a in range(x.ndim))
    shift = lax.stop_gradient(x[first])
    shift_a, shift_b = lax.optimization_barrier((shift, shift))
    mean_d = jnp.mean(x - shift_a, axis=axes)
    var = jnp.maximum(jnp.mean(jnp.square(x - shift_b), axis=axes) - jnp.square(mean_d), 0.0)
    return jnp.squeeze(shift, axis=axes) + mean_d, var


def applies(x: Any, norm: Any) -> bool:
    """Whether cnn's BatchNorm `norm`, called on `x` in training mode, may take this path."""
    if x.ndim != 4 or x.dtype != jnp.float32 or norm.axis not in (-1, 3):
        return False
    if norm.scale is None or norm.bias is None or norm.axis_name is not None:
        return False
    if norm.dtype not in (None, jnp.float32) or norm.param_dtype != jnp.float32:
        return False
    return onednn_applies()


def batch_norm_train(x: jax.Array, scale: jax.Array, shift: jax.Array, eps: float
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(y, batch mean, batch biased variance); the statistics carry no gradient."""
    y, mean, var = _norm(x, scale, shift, float(eps))
    return y, lax.stop_gradient(mean), lax.stop_gradient(var)


def _shapes(x: jax.Array):
    c = x.shape[-1]
    return (jax.ShapeDtypeStruct(x.shape, jnp.float32), jax.ShapeDtypeStruct((c,), jnp.float32),
            jax.ShapeDtypeStruct((c,), jnp.float32))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _norm(x, scale, shift, eps):
    mean, var = batch_stats(x, (0, 1, 2))
    y = (x - mean) * (lax.rsqrt(var + eps) * scale) + shift
    return y, mean, var


def _forward(x, scale, shift, eps):
    y, mean, var = _norm(x, scale, shift, eps)
    return (y, mean, var), (x, scale, mean, var)


def _backward(eps, residuals, cotangents):
    x, scale, mean, var = residuals
    dy = cotangents[0]  # the statistics' cotangents are zero: batch_norm_train stops their gradient
    return jax.ffi.ffi_call("cnn_onednn_norm_backward", _shapes(x), vmap_method="sequential")(
        x, dy, scale, mean, var, eps=np.float32(eps))


_norm.defvjp(_forward, _backward)
