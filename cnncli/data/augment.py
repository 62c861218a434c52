"""Device-side preprocessing: runs inside the jit-compiled step, so the host only gathers uint8.

`preprocess_eval` is the deterministic version of `augment_train`. Both take an output `size`:
a pack stores images larger than the model's input (`cnncli.data.packed`), and the step crops
and resizes them here, on the device, instead of on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cnncli.config import AugmentConfig


def normalize(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    return (x - mean) / std


def to_float(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) / 255.0


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
    """Zero-pad by `padding` pixels, then crop back to the original size at a random offset per image."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


def random_flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Mirror each image horizontally with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    return jnp.where(flip, x[:, :, ::-1, :], x)


def resize_to(x: jax.Array, size: int) -> jax.Array:
    """Float NHWC images resized to size x size (bilinear, antialiased when shrinking); unchanged at that size."""
    n, h, w, c = x.shape
    if (h, w) == (size, size):
        return x
    return jax.image.resize(x, (n, size, size, c), "linear", antialias=True)


def random_resized_crop(key: jax.Array, x: jax.Array, scale: tuple[float, float], ratio: tuple[float, float],
                        size: int | None = None) -> jax.Array:
    """The ImageNet recipe: a random area fraction and aspect ratio, resized to size x size (None: the
    input size)."""
    n, h, w, c = x.shape
    oh, ow = (h, w) if size is None else (size, size)
    k_area, k_ratio, k_x, k_y = jax.random.split(key, 4)
    area = jax.random.uniform(k_area, (n,), minval=scale[0], maxval=scale[1]) * h * w
    log_r = jax.random.uniform(k_ratio, (n,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1]))
    r = jnp.exp(log_r)
    cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
    x0 = jax.random.uniform(k_x, (n,)) * (w - cw)
    y0 = jax.random.uniform(k_y, (n,)) * (h - ch)

    def crop(img, y0, x0, ch, cw):
        sy, sx = oh / ch, ow / cw
        return jax.image.scale_and_translate(
            img, (oh, ow, c), (0, 1), jnp.array([sy, sx]), jnp.array([-y0 * sy, -x0 * sx]), "linear", antialias=True
        )

    return jax.vmap(crop)(x, y0, x0, ch, cw)


def augment_train(key: jax.Array, x_uint8: jax.Array, cfg: AugmentConfig, mean: jax.Array, std: jax.Array,
                  size: int | None = None) -> jax.Array:
    """uint8 NHWC -> augmented, normalised float32 of size x size (None: the input's size)."""
    x = to_float(x_uint8)
    k_rrc, k_crop, k_flip = jax.random.split(key, 3)
    if cfg.random_resized_crop:
        x = random_resized_crop(k_rrc, x, tuple(cfg.scale), tuple(cfg.ratio), size)
    elif size is not None:
        x = resize_to(x, size)
    if cfg.random_crop_padding > 0:
        x = random_crop(k_crop, x, cfg.random_crop_padding)
    if cfg.flip:
        x = random_flip(k_flip, x)
    return normalize(x, mean, std)


def preprocess_eval(x_uint8: jax.Array, mean: jax.Array, std: jax.Array, size: int | None = None) -> jax.Array:
    """uint8 NHWC -> normalised float32 of size x size (the whole image resized; None: as it is), no randomness."""
    x = to_float(x_uint8)
    return normalize(x if size is None else resize_to(x, size), mean, std)
