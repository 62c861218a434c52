"""A cnn model computing in float64 (inside `jax.enable_x64(True)`), for tests that compare two
computations of the same step: in float32 their difference is at the mercy of ReLU's and max-pool's
kinks, where an activation within rounding of zero (or of its window's other maximum) takes either
side depending on the order of float32 sums, and moves a loss or a weight far beyond rounding."""

import jax
import jax.numpy as jnp
from flax import nnx

from cnncli.train.state import split_model


def split_float64(model: nnx.Module):
    """split_model(model), every layer computing in float64 and its params and statistics cast to it."""
    if not jax.config.jax_enable_x64:
        raise RuntimeError("call inside jax.enable_x64(True): float64 arrays are float32 otherwise")
    for _, module in nnx.iter_modules(model):
        if getattr(module, "dtype", None) is not None:
            module.dtype = jnp.float64
    parts, params, stats = split_model(model)
    params, stats = (jax.tree.map(lambda a: a.astype(jnp.float64), tree) for tree in (params, stats))
    return parts, params, stats
