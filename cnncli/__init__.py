"""cnn: train, evaluate and explain classic convolutional networks on JAX + Flax NNX."""

__version__ = "0.1.0"
