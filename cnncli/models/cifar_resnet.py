"""CIFAR ResNets (He et al. 2016, section 4.2) and their plain twins.

6n+2 layers: a 3x3/16 stem, three stages of n basic blocks with 16, 32 and 64 filters
(the first block of stages 2 and 3 halves the resolution with stride 2), global average
pooling and one dense layer. Shortcuts:

- option A (default, the paper's CIFAR choice): identity; where the shape changes, the
  input is subsampled with stride 2 and its missing channels are zero -- no parameters;
- option B: a 1x1 projection convolution + BatchNorm where the shape changes;
- none: the plain network of the degradation experiment (same layers, no shortcuts).

Initialisation: He normal (fan_out) convolutions, BatchNorm scale 1 / bias 0, PyTorch's
default uniform init for the dense layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from cnncli.models.layers import Conv, GlobalAvgPool, Linear, bn, logits, residual_add, torch_linear_init


class CifarBasicBlock(nnx.Module):
    """Two 3x3 conv-BN layers with an optional shortcut ('A', 'B' or None for plain)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, shortcut: str | None, opts: dict, *, rngs: nnx.Rngs):
        dtype = opts["dtype"]
        self.conv1 = Conv(in_ch, out_ch, 3, stride, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = bn(out_ch, opts, rngs=rngs)
        self.conv2 = Conv(out_ch, out_ch, 3, 1, 1, use_bias=False, dtype=dtype, rngs=rngs)
        zero = bool(opts["zero_init_residual"]) and shortcut is not None
        self.bn2 = bn(out_ch, opts, zero_scale=zero, rngs=rngs)
        self.shortcut = shortcut
        self.stride = stride
        self.extra_channels = out_ch - in_ch
        reshape = stride != 1 or in_ch != out_ch
        if shortcut == "B" and reshape:
            self.proj = Conv(in_ch, out_ch, 1, stride, 0, use_bias=False, dtype=dtype, rngs=rngs)
            self.proj_bn = bn(out_ch, opts, rngs=rngs)
        else:
            self.proj = None
            self.proj_bn = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.shortcut is None:
            return nnx.relu(y)
        if self.proj is not None:
            s = self.proj_bn(self.proj(x))
        else:
            s = x[:, :: self.stride, :: self.stride, :]
            if self.extra_channels:
                s = jnp.pad(s, ((0, 0), (0, 0), (0, 0), (0, self.extra_channels)))
        return nnx.relu(residual_add(self, y, s))


class CifarResNet(nnx.Module):
    """ResNet-(6n+2) for 32x32 images; `shortcut=None` builds the plain twin."""

    def __init__(self, depth: int, num_classes: int, in_channels: int, shortcut: str | None, opts: dict,
                 *, rngs: nnx.Rngs):
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        widths = [max(1, round(w * opts["width"])) for w in (16, 32, 64)]
        dtype = opts["dtype"]
        self.dtype = dtype
        self.remat = bool(opts["remat"])
        self.conv1 = Conv(in_channels, widths[0], 3, 1, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = bn(widths[0], opts, rngs=rngs)
        in_ch = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(CifarBasicBlock(in_ch, w, stride, shortcut, opts, rngs=rngs))
                in_ch = w
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.pool = GlobalAvgPool()
        k_init, b_init = torch_linear_init(in_ch)
        self.fc = Linear(in_ch, num_classes, dtype=dtype, kernel_init=k_init, bias_init=b_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.bn1(self.conv1(x.astype(self.dtype))))
        for stage in (self.layer1, self.layer2, self.layer3):
            for block in stage:
                x = nnx.remat(lambda b, h: b(h))(block, x) if self.remat else block(x)
        return logits(self.fc(self.pool(x)))
