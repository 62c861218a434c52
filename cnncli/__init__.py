"""cnn: train, evaluate and explain classic convolutional networks on JAX + Flax NNX."""

from cnncli.xla_flags import apply_defaults as _apply_xla_defaults

__version__ = "0.1.0"

_apply_xla_defaults()  # before jax starts its backend: see cnncli/xla_flags.py
