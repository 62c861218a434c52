"""The FLOPs `cnn bench` divides by: the model's, counted from its traced forward pass, and the chips' peaks."""

from __future__ import annotations

import math

from cnncli.kernels import xla_kernels

# Dense bfloat16 peak FLOP/s per chip, matched against the device kind in this order.
PEAK_BF16_FLOPS = (
    ("h100 pcie", 756e12),
    ("h100 nvl", 835e12),
    ("h100", 989.4e12),
    ("h200", 989.4e12),
    ("a100", 312e12),
    ("l4", 121e12),
    ("tpu v4", 275e12),
    ("tpu v5 lite", 197e12),
    ("tpu v5e", 197e12),
    ("tpu v5p", 459e12),
    ("tpu v5", 459e12),
    ("tpu v6 lite", 918e12),
    ("tpu v6e", 918e12),
)


def peak_flops(device_kind: str) -> float | None:
    """The chip's dense bf16 peak FLOP/s for a known device kind, else None."""
    kind = device_kind.lower()
    for key, peak in PEAK_BF16_FLOPS:
        if key in kind:
            return peak
    return None


def jaxpr_macs(jaxpr) -> int:
    """Multiply-accumulates of the convolutions and matrix products in a jaxpr, sub-jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += jaxpr_macs(inner)
    return total


def model_flops_per_step(parts, params, batch_stats, batch_shape: tuple[int, ...]) -> float:
    """The model's training FLOPs for one batch: 3 x the forward pass (backward = 2 x forward), 2 per MAC.

    Counted from the traced forward pass, independent of the backend: XLA's GPU cost analysis
    leaves out convolutions that run as cuDNN calls.
    """
    import jax
    import jax.numpy as jnp

    from cnncli.train.step import forward

    x = jax.ShapeDtypeStruct(batch_shape, jnp.float32)
    with xla_kernels():  # convolutions as lax primitives, whatever runs them
        closed = jax.make_jaxpr(lambda p, s, x: forward(parts, p, s, x, train=True)[0])(params, batch_stats, x)
    return 3.0 * 2.0 * jaxpr_macs(closed.jaxpr)
