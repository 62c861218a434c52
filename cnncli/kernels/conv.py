"""`conv_general_dilated`: lax's signature, oneDNN's convolutions on the CPU where they apply.

The models' Conv layers call this in place of `lax.conv_general_dilated`. On a single CPU
device, for float32 NHWC/HWIO convolutions without dilation or groups (every convolution the
model families here use), the forward pass and both gradients are oneDNN calls joined by a
custom VJP; everything else, and every machine where the handlers cannot be built, gets lax's
convolution unchanged. The choice is made while tracing, so one compiled step uses one path.

The switch and the reasons are cnncli.kernels.onednn's.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnncli.kernels.onednn import onednn_applies

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2))


def _explicit_pads(padding: str | Sequence[tuple[int, int]], lhs: Any, rhs: Any,
                   strides: Sequence[int]) -> tuple[tuple[int, int], ...] | None:
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[0:2], strides, padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return pads if len(pads) == 2 and all(p >= 0 for pair in pads for p in pair) else None


def _onednn_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                 batch_group_count, preferred_element_type, out_sharding) -> tuple[tuple[int, int], ...] | None:
    """The explicit paddings when this convolution may run through oneDNN, else None."""
    if out_sharding is not None or lhs.ndim != 4 or rhs.ndim != 4:
        return None
    if lhs.dtype != jnp.float32 or rhs.dtype != jnp.float32:
        return None
    if preferred_element_type not in (None, jnp.float32, np.dtype("float32")):
        return None
    if feature_group_count != 1 or batch_group_count != 1 or len(strides) != 2 or min(strides) < 1:
        return None
    if any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1)))):
        return None
    if lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC:
        return None
    pads = _explicit_pads(padding, lhs, rhs, strides)
    if pads is None or min(_out_shape(lhs.shape, rhs.shape, strides, pads)) < 1:
        return None
    return pads if onednn_applies() else None


def conv_general_dilated(lhs: Any, rhs: Any, window_strides: Sequence[int], padding: Any,
                         lhs_dilation: Sequence[int] | None = None, rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: Any = None, feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: Any = None, preferred_element_type: Any = None,
                         out_sharding: Any = None) -> jax.Array:
    """`lax.conv_general_dilated`, through oneDNN where it applies (see the module's docstring)."""
    strides = tuple(int(s) for s in window_strides)
    pads = _onednn_pads(lhs, rhs, strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count, preferred_element_type, out_sharding)
    if pads is not None:
        return _onednn_conv(lhs, rhs, strides, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count, precision,
                                    preferred_element_type, out_sharding=out_sharding)


def _attrs(strides: tuple[int, int], pads: tuple[tuple[int, int], ...]) -> dict[str, np.int64]:
    (ph0, ph1), (pw0, pw1) = pads
    values = {"sh": strides[0], "sw": strides[1], "ph0": ph0, "ph1": ph1, "pw0": pw0, "pw1": pw1}
    return {k: np.int64(v) for k, v in values.items()}


def _call(target: str, shape: tuple[int, ...], a: jax.Array, b: jax.Array, strides, pads) -> jax.Array:
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(target, out, vmap_method="sequential")(a, b, **_attrs(strides, pads))


def _out_shape(x_shape, w_shape, strides, pads) -> tuple[int, int, int, int]:
    (ph0, ph1), (pw0, pw1) = pads
    oh = (x_shape[1] + ph0 + ph1 - w_shape[0]) // strides[0] + 1
    ow = (x_shape[2] + pw0 + pw1 - w_shape[1]) // strides[1] + 1
    return (x_shape[0], oh, ow, w_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x, w, strides, pads):
    return _call("cnn_onednn_conv_forward", _out_shape(x.shape, w.shape, strides, pads), x, w, strides, pads)


def _forward(x, w, strides, pads):
    return _onednn_conv(x, w, strides, pads), (x, w)


def _backward(strides, pads, residuals, dy):
    x, w = residuals
    dx = _call("cnn_onednn_conv_backward_data", x.shape, dy, w, strides, pads)
    dw = _call("cnn_onednn_conv_backward_weights", w.shape, x, dy, strides, pads)
    return dx, dw


_onednn_conv.defvjp(_forward, _backward)
