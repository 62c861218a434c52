"""cnn: train, evaluate and explain classic convolutional networks on JAX + Flax NNX.

Importing cnn (any of its modules) changes nothing: no environment variable, no file, no compiler
run. A Python program that wants the CPU speed settings the `cnn` command applies at start (XLA
flags, oneDNN convolutions) calls `cnncli.apply_cpu_defaults()` once, before it uses jax.
"""

__version__ = "0.1.0"


def apply_cpu_defaults(kernels: bool = True) -> dict:
    """cnn's CPU settings for this process (cnncli/cpu_defaults.py); returns what was done."""
    from cnncli.cpu_defaults import apply_cpu_defaults as apply

    return apply(kernels=kernels)
