"""Max pooling whose gradient is one scatter-add of each window's winner.

`max_pool(x, kernel, stride, padding)` pools an NHWC batch like `flax.nnx.max_pool` with
PyTorch-style padding (padded cells never win) and gives the same values and the same gradient:
each window's gradient goes to its first maximum in raster order, as in PyTorch and in XLA's
select-and-scatter. The difference is how: under differentiation the forward pass walks the
kernel's offsets once (kh x kw strided slices of the padded input, fused by XLA into one loop)
and keeps, beside the maximum, the offset that won (int8 up to 128 offsets, int32 beyond); the
backward pass adds each window's gradient at that offset's input cell, one scatter-add per image
(the batch is a batching dimension: a batch-sharded step scatters on each device with no
collective). jax's own rule goes through select-and-gather / select-and-scatter, which XLA:CPU
runs as a window reduction over packed pairs: 113-117 ms against 23-26 ms for ResNet-18's stem
pool at batch 32, 112x112 (forward and backward, this 2-core machine). Outside differentiation
it is `lax.reduce_window`, as flax's.

Only on the backends in SCATTER_BACKENDS (the CPU, where it was measured); elsewhere the pool is
`lax.reduce_window` differentiated by jax. Being a custom VJP, it has no forward-mode derivative
(`jax.jvp`, `jax.jacfwd` through a model with max pooling fail on the CPU).

A NaN in a window wins it, as in `lax.reduce_window`'s max; a padded cell never does, even where
the window's real cells are all -inf (its first real cell then wins, as in PyTorch; jax's rule
lets the padding win and drops that window's gradient). Where two windows overlap (kernel larger
than stride) an input cell's gradient is the sum of its windows' shares, added in a different
order than select-and-scatter's: equal to the last float32 rounding.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pair = tuple[int, int]


# Where the scatter-add gradient is used: measured on the CPU only. Elsewhere jax's own rule (the
# GPU figures in benchmarks/RESULTS.md were taken with it).
SCATTER_BACKENDS = ("cpu",)


def max_pool(x: jax.Array, kernel: Pair, stride: Pair, padding: Pair) -> jax.Array:
    """Max over kh x kw windows of an NHWC batch, `padding` cells of -inf on each side of H and W."""
    kernel, stride, padding = tuple(kernel), tuple(stride), tuple(padding)
    if any(p >= k for p, k in zip(padding, kernel)):  # a window of padding alone has no cell to win it
        raise ValueError(f"max pooling: padding {padding} must be smaller than the kernel {kernel}")
    if jax.default_backend() not in SCATTER_BACKENDS:
        return _pool(kernel, stride, padding, x)  # undecorated: jax differentiates reduce_window itself
    return _pool_scatter(kernel, stride, padding, x)


def _out_size(size: int, k: int, s: int, p: int) -> int:
    return (size + 2 * p - k) // s + 1


def _pool(kernel: Pair, stride: Pair, padding: Pair, x: jax.Array) -> jax.Array:
    neg_inf = jnp.array(-jnp.inf, x.dtype)
    pads = ((0, 0), *((p, p) for p in padding), (0, 0))
    return lax.reduce_window(x, neg_inf, lax.max, (1, *kernel, 1), (1, *stride, 1), pads)


_pool_scatter = jax.custom_vjp(_pool, nondiff_argnums=(0, 1, 2))


def _first_real(size: int, out: int, k: int, s: int, p: int) -> np.ndarray:
    """[k, out]: whether offset i along one axis is window o's first real (not padded) cell on it."""
    pos = s * np.arange(out)[None, :] - p + np.arange(k)[:, None]
    real = (pos >= 0) & (pos < size)
    return real & (np.cumsum(real, axis=0) == 1)


def _pool_fwd(kernel: Pair, stride: Pair, padding: Pair, x: jax.Array):
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = x.shape
    oh, ow = _out_size(h, kh, sh, ph), _out_size(w, kw, sw, pw)
    xp = lax.pad(x, jnp.array(-jnp.inf, x.dtype), ((0, 0, 0), (ph, ph, 0), (pw, pw, 0), (0, 0, 0)))
    first_h, first_w = _first_real(h, oh, kh, sh, ph), _first_real(w, ow, kw, sw, pw)
    index = jnp.int8 if kh * kw <= 128 else jnp.int32
    best = winner = None
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        cand = lax.slice(xp, (0, i, j, 0), (n, i + sh * (oh - 1) + 1, j + sw * (ow - 1) + 1, c), (1, sh, sw, 1))
        if best is None:
            best, winner = cand, jnp.zeros(cand.shape, index)
            continue
        wins = (cand > best) | (jnp.isnan(cand) & ~jnp.isnan(best))  # strictly greater: the first maximum keeps it
        # Padded cells never win (as in PyTorch): a window's first real cell takes over from the padded
        # ones before it, also at -inf. The mask is known when tracing and non-empty on the borders only.
        takeover = np.outer(first_h[i], first_w[j])
        if takeover.any():
            wins = wins | takeover[None, :, :, None]
        best = jnp.where(wins, cand, best)
        winner = jnp.where(wins, index(t), winner)
    return best, (winner, x.shape)


def _pool_bwd(kernel: Pair, stride: Pair, padding: Pair, residuals, dy: jax.Array):
    winner, (n, h, w, c) = residuals
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = dy.shape[1:3]
    # Each window's gradient is added at its winner's input cell: one scatter-add that reads every
    # window's winner once. (Gathered per input cell instead, XLA fused the winners' walk into the
    # gradient and recomputed it for every read: slower than jax's own rule in ResNet-18's step.)
    # A winner is never a padded cell.
    i, j = winner.astype(jnp.int32) // kw, winner.astype(jnp.int32) % kw
    row = (sh * jnp.arange(oh, dtype=jnp.int32) - ph)[None, :, None, None] + i
    col = (sw * jnp.arange(ow, dtype=jnp.int32) - pw)[None, None, :, None] + j
    # Image by image (the batch a batching dimension of the scatter, indices below h*w*c): under a
    # batch-sharded jit each device scatters its own images, with no collective (a scatter over the
    # whole batch's flat indices made XLA all-gather every index and gradient).
    flat = ((row * w + col) * c + jnp.arange(c, dtype=jnp.int32)).reshape(n, oh * ow * c)

    def one(flat, dy):
        return jnp.zeros((h * w * c,), dy.dtype).at[flat].add(dy, mode="promise_in_bounds")

    dx = jax.vmap(one)(flat, dy.reshape(n, oh * ow * c))
    return (dx.reshape(n, h, w, c),)


_pool_scatter.defvjp(_pool_fwd, _pool_bwd)
