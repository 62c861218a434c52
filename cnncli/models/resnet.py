"""ImageNet ResNets (He et al. 2016), torchvision's v1.5 layout.

7x7/2 stem conv, 3x3/2 max pool, four stages (64, 128, 256, 512 filters; x4 outputs for
bottleneck blocks) that halve the resolution at their first block (stride on the 3x3
conv in bottlenecks -- v1.5), 1x1 projection + BatchNorm shortcuts where the shape
changes, global average pooling and one dense layer.

Initialisation (torchvision): He normal (fan_out) convolutions, BatchNorm 1/0 (the last
BatchNorm of each block optionally zero, `zero_init_residual`), PyTorch's default
uniform init for the dense layer.
"""

from __future__ import annotations

import jax
from flax import nnx

from cnncli.models.layers import Conv, GlobalAvgPool, Linear, MaxPool, bn, logits, residual_add, torch_linear_init


def _downsample(in_ch: int, out_ch: int, stride: int, opts: dict, rngs: nnx.Rngs):
    if stride == 1 and in_ch == out_ch:
        return None, None
    conv = Conv(in_ch, out_ch, 1, stride, 0, use_bias=False, dtype=opts["dtype"], rngs=rngs)
    return conv, bn(out_ch, opts, rngs=rngs)


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, opts: dict, *, rngs: nnx.Rngs):
        dtype = opts["dtype"]
        self.conv1 = Conv(in_ch, width, 3, stride, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = bn(width, opts, rngs=rngs)
        self.conv2 = Conv(width, width, 3, 1, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn2 = bn(width, opts, zero_scale=bool(opts["zero_init_residual"]), rngs=rngs)
        self.downsample, self.downsample_bn = _downsample(in_ch, width, stride, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.downsample is None else self.downsample_bn(self.downsample(x))
        return nnx.relu(residual_add(self, y, s))


class Bottleneck(nnx.Module):
    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, opts: dict, *, rngs: nnx.Rngs):
        dtype = opts["dtype"]
        out_ch = width * self.expansion
        self.conv1 = Conv(in_ch, width, 1, 1, 0, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = bn(width, opts, rngs=rngs)
        self.conv2 = Conv(width, width, 3, stride, 1, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn2 = bn(width, opts, rngs=rngs)
        self.conv3 = Conv(width, out_ch, 1, 1, 0, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn3 = bn(out_ch, opts, zero_scale=bool(opts["zero_init_residual"]), rngs=rngs)
        self.downsample, self.downsample_bn = _downsample(in_ch, out_ch, stride, opts, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = nnx.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        s = x if self.downsample is None else self.downsample_bn(self.downsample(x))
        return nnx.relu(residual_add(self, y, s))


class ResNet(nnx.Module):
    """ResNet-18/34/50/101/152 for ImageNet-style inputs."""

    def __init__(self, block: type, layers: list[int], num_classes: int, in_channels: int, opts: dict,
                 *, rngs: nnx.Rngs):
        dtype = opts["dtype"]
        self.dtype = dtype
        self.remat = bool(opts["remat"])
        stem = max(1, round(64 * opts["width"]))
        self.conv1 = Conv(in_channels, stem, 7, 2, 3, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = bn(stem, opts, rngs=rngs)
        self.maxpool = MaxPool(3, 2, 1)
        in_ch = stem
        for i, (n, base) in enumerate(zip(layers, (64, 128, 256, 512))):
            width = max(1, round(base * opts["width"]))
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, width, stride, opts, rngs=rngs))
                in_ch = width * block.expansion
            setattr(self, f"layer{i + 1}", nnx.List(blocks))
        self.pool = GlobalAvgPool()
        k_init, b_init = torch_linear_init(in_ch)
        self.fc = Linear(in_ch, num_classes, dtype=dtype, kernel_init=k_init, bias_init=b_init, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.maxpool(nnx.relu(self.bn1(self.conv1(x.astype(self.dtype)))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = nnx.remat(lambda b, h: b(h))(block, x) if self.remat else block(x)
        return logits(self.fc(self.pool(x)))
