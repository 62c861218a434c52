"""Layers shared by the model families.

Each layer reports itself to an optional recorder when called, so that `summary.py`
can walk a real forward pass (under `jax.eval_shape`, no compute) and read every
layer's kind, kernel, stride, padding and output shape from the model itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cnncli.kernels import batch_norm_train, conv_general_dilated
from cnncli.kernels.batchnorm import applies as onednn_norm_applies
from cnncli.kernels.batchnorm import batch_stats
from cnncli.kernels.maxpool import max_pool

# He et al. / torchvision: kaiming normal with fan_out for convolutions followed by ReLU.
he_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


@dataclasses.dataclass
class LayerCall:
    """One layer call seen during a recorded forward pass."""

    module: Any
    kind: str  # conv | fc | bn | pool | add | lrn | dropout
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]


_recorder: contextvars.ContextVar[list[LayerCall] | None] = contextvars.ContextVar("cnn_layer_recorder", default=None)


@contextlib.contextmanager
def record_layers() -> Iterator[list[LayerCall]]:
    """Collect a LayerCall for every layer called inside the block."""
    calls: list[LayerCall] = []
    token = _recorder.set(calls)
    try:
        yield calls
    finally:
        _recorder.reset(token)


def _record(module: Any, kind: str, x: jax.Array, y: jax.Array) -> None:
    calls = _recorder.get()
    if calls is not None:
        calls.append(LayerCall(module, kind, tuple(x.shape), tuple(y.shape)))


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class Conv(nnx.Conv):
    """2-D convolution with PyTorch-style symmetric integer padding (oneDNN on a CPU: cnncli.kernels)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, padding: int = 0, *,
                 use_bias: bool = True, dtype: Any = None, kernel_init: Any = he_normal_fan_out,
                 bias_init: Any = nnx.initializers.zeros_init(), rngs: nnx.Rngs):
        pad = _pair(padding)
        super().__init__(in_ch, out_ch, _pair(kernel), _pair(stride), padding=((pad[0], pad[0]), (pad[1], pad[1])),
                         use_bias=use_bias, dtype=dtype, kernel_init=kernel_init, bias_init=bias_init,
                         conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.pad = pad

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        _record(self, "conv", x, y)
        return y


class Linear(nnx.Linear):
    """Fully connected layer."""

    def __init__(self, in_features: int, out_features: int, *, dtype: Any = None,
                 kernel_init: Any = None, bias_init: Any = None, rngs: nnx.Rngs):
        kwargs = {}
        if kernel_init is not None:
            kwargs["kernel_init"] = kernel_init
        if bias_init is not None:
            kwargs["bias_init"] = bias_init
        super().__init__(in_features, out_features, dtype=dtype, rngs=rngs, **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        _record(self, "fc", x, y)
        return y


def torch_linear_init(fan_in: int) -> tuple[Any, Any]:
    """PyTorch's default nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias."""
    bound = 1.0 / np.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init, init


class BatchNorm(nnx.BatchNorm):
    """BatchNorm; `momentum` uses Flax's convention (PyTorch's 0.1 is 0.9 here).

    In training the batch statistics are `cnncli.kernels.batch_stats`: one pass over the data like
    flax's fast variance, but shifted by a sample of each channel, so that a channel whose mean is
    far from zero is normalised right (flax's E[x^2] - E[x]^2 is 6% off at |mean|/std = 1000 in
    float32). On a CPU the gradient is one oneDNN call where that applies (cnncli.kernels); the
    rest is flax's arithmetic: biased variance, running averages moved by `momentum`. With an
    `axis_name` (pmap, shard_map) it is flax's own two-pass BatchNorm; masks are not taken."""

    def __init__(self, *args: Any, use_fast_variance: bool = False, **kwargs: Any):
        super().__init__(*args, use_fast_variance=use_fast_variance, **kwargs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average is not False or self.axis_name is not None:
            y = super().__call__(x)
        elif onednn_norm_applies(x, self):
            y, mean, var = batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon)
            self._update_averages(mean, var)
        else:
            y = self._train(x)
        _record(self, "bn", x, y)
        return y

    def _update_averages(self, mean: jax.Array, var: jax.Array) -> None:
        self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * var)

    def _train(self, x: jax.Array) -> jax.Array:
        """Training mode off the oneDNN path: flax's normalisation of the shifted statistics."""
        features = _axes(self.axis, x.ndim)
        reduce = tuple(a for a in range(x.ndim) if a not in features)
        scale = self.scale[...] if self.scale is not None else None
        bias = self.bias[...] if self.bias is not None else None
        x, scale, bias = self.promote_dtype((x, scale, bias), dtype=self.dtype)
        mean, var = batch_stats(x, reduce)
        self._update_averages(mean, var)
        stats_shape = [1 if a in reduce else n for a, n in enumerate(x.shape)]
        y = x - mean.reshape(stats_shape)
        mul = jax.lax.rsqrt(var.reshape(stats_shape) + self.epsilon)
        dtypes = [x.dtype]
        if scale is not None:
            mul = mul * scale.reshape(stats_shape)
            dtypes.append(scale.dtype)
        y = y * mul
        if bias is not None:
            y = y + bias.reshape(stats_shape)
            dtypes.append(bias.dtype)
        return jnp.asarray(y, self.dtype or jnp.result_type(*dtypes))


def _axes(axis: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(a % ndim for a in axes)


class Dropout(nnx.Dropout):
    """Dropout (recorded so that summaries show where it acts)."""

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        _record(self, "dropout", x, y)
        return y


class MaxPool(nnx.Module):
    """Max pooling with PyTorch-style padding (padded cells never win); its gradient goes to each
    window's first maximum (cnncli.kernels.maxpool: on the CPU one scatter-add per image, the pool
    about 4-5x faster than with jax's select-and-scatter; elsewhere jax's own rule)."""

    def __init__(self, kernel: int, stride: int, padding: int = 0):
        self.kernel, self.stride, self.pad = _pair(kernel), _pair(stride), _pair(padding)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = max_pool(x, self.kernel, self.stride, self.pad)
        _record(self, "pool", x, y)
        return y


class GlobalAvgPool(nnx.Module):
    """Mean over the spatial axes: [N, H, W, C] -> [N, C]."""

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.mean(x, axis=(1, 2))
        _record(self, "pool", x, y)
        return y


def _adaptive_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Averaging matrix [out, in] with torchvision's adaptive bins [floor(i*n/o), ceil((i+1)*n/o))."""
    m = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


class AdaptiveAvgPool(nnx.Module):
    """Average pooling to a fixed output grid, as torch.nn.AdaptiveAvgPool2d."""

    def __init__(self, output_size: int):
        self.output_size = output_size

    def __call__(self, x: jax.Array) -> jax.Array:
        _, h, w, _ = x.shape
        o = self.output_size
        if (h, w) == (o, o):
            y = x
        else:
            mh = jnp.asarray(_adaptive_matrix(h, o), x.dtype)
            mw = jnp.asarray(_adaptive_matrix(w, o), x.dtype)
            y = jnp.einsum("nhwc,ih,jw->nijc", x, mh, mw)
        _record(self, "pool", x, y)
        return y


class LocalResponseNorm(nnx.Module):
    """AlexNet's local response normalisation across channels (k=2, n=5, alpha=1e-4, beta=0.75)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def __call__(self, x: jax.Array) -> jax.Array:
        sq = jnp.square(x)
        half = self.size // 2
        padded = jnp.pad(sq, ((0, 0), (0, 0), (0, 0), (half, self.size - 1 - half)))
        window = sum(padded[..., i : i + x.shape[-1]] for i in range(self.size))
        y = x / jnp.power(self.k + self.alpha / self.size * window, self.beta)
        _record(self, "lrn", x, y)
        return y


def logits(x: jax.Array) -> jax.Array:
    """A model's output: float32 whatever the compute dtype (bfloat16 logits lose the loss's precision),
    float64 kept for a float64 model."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def residual_add(module: Any, x: jax.Array, shortcut: jax.Array) -> jax.Array:
    """x + shortcut, recorded as the block's 'add'."""
    y = x + shortcut
    _record(module, "add", x, y)
    return y


def bn(features: int, options: dict, *, zero_scale: bool = False, rngs: nnx.Rngs) -> BatchNorm:
    """BatchNorm from the model options (momentum, epsilon, dtype)."""
    kwargs = {}
    if zero_scale:
        kwargs["scale_init"] = nnx.initializers.zeros_init()
    return BatchNorm(features, momentum=options["bn_momentum"], epsilon=options["bn_epsilon"],
                     dtype=options["dtype"], rngs=rngs, **kwargs)
