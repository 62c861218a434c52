"""Hand-picked kernels that XLA's own code generation does not match on some machines.

Today one: oneDNN's convolutions on the CPU (conv.py), built on first use (build.py) from
onednn_conv.cc. Every kernel here has a pure-XLA fallback and is tested against it.
"""

from cnncli.kernels.conv import conv_general_dilated, convolution_backend, onednn_status, xla_convolutions

__all__ = ["conv_general_dilated", "convolution_backend", "onednn_status", "xla_convolutions"]
