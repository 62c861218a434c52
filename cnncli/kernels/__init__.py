"""Hand-picked kernels that XLA's own code generation does not match on some machines.

Today oneDNN's convolutions (conv.py) and training-mode batch norm (batchnorm.py) on the CPU,
built once per machine (build.py) from onednn.cc and loaded by `load_onednn()` (never on import or
while tracing; when they apply is onednn.py's call), and max pooling's gradient as one scatter-add
of each window's winner (maxpool.py, pure jax, on the CPU). Every kernel here has a pure-XLA
fallback and is tested against it.
"""

from cnncli.kernels.batchnorm import batch_norm_train, batch_stats
from cnncli.kernels.conv import conv_general_dilated
from cnncli.kernels.onednn import kernels_in_use, load_onednn, onednn_status, xla_kernels

__all__ = ["batch_norm_train", "batch_stats", "conv_general_dilated", "kernels_in_use", "load_onednn", "onednn_status", "xla_kernels"]
