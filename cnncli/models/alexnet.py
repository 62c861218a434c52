"""AlexNet (Krizhevsky et al. 2012), single-tower, as in the lecture's table.

    CONV1 96 11x11/4 pad 0 -> POOL1 3x3/2 -> CONV2 256 5x5 pad 2 -> POOL2 3x3/2
    -> CONV3 384 3x3 pad 1 -> CONV4 384 3x3 pad 1 -> CONV5 256 3x3 pad 1 -> POOL3 3x3/2
    -> FC6 4096 -> FC7 4096 -> FC8 classes

ReLU after every conv and hidden FC, dropout 0.5 before FC6 and FC7, optional local
response normalisation after CONV1 and CONV2 (off by default). Adaptive average pooling
to 6x6 before FC6 lets other input sizes through (227x227 gives exactly 6x6).

Initialisation: He normal (fan_out) convolutions with zero bias and N(0, 0.01) dense
layers with zero bias (torchvision's VGG scheme; the paper's N(0, 0.01) everywhere with
unit biases trains far slower without its original learning-rate hand-tuning).

`alexnet_torchvision` (`alexnet_tv`) is torchvision's variant, for its pretrained weights:
64-192-384-256-256 filters, CONV1 padded by 2, no LRN, dropout before FC6 and FC7.
"""

from __future__ import annotations

import jax
from flax import nnx

from cnncli.models.layers import AdaptiveAvgPool, Conv, Dropout, Linear, LocalResponseNorm, MaxPool, logits

fc_init = nnx.initializers.normal(0.01)


class AlexNet(nnx.Module):
    """The lecture's single-tower AlexNet; `filters` and `conv1_padding` give torchvision's variant."""

    def __init__(self, num_classes: int, in_channels: int, opts: dict, *, rngs: nnx.Rngs,
                 filters: tuple[int, ...] = (96, 256, 384, 384, 256), conv1_padding: int = 0):
        dtype = opts["dtype"]
        self.dtype = dtype

        def width(c: int) -> int:
            return max(1, round(c * opts["width"]))

        c1, c2, c3, c4, c5 = (width(c) for c in filters)
        self.conv1 = Conv(in_channels, c1, 11, 4, conv1_padding, dtype=dtype, rngs=rngs)
        self.lrn1 = LocalResponseNorm() if opts["lrn"] else None
        self.pool1 = MaxPool(3, 2)
        self.conv2 = Conv(c1, c2, 5, 1, 2, dtype=dtype, rngs=rngs)
        self.lrn2 = LocalResponseNorm() if opts["lrn"] else None
        self.pool2 = MaxPool(3, 2)
        self.conv3 = Conv(c2, c3, 3, 1, 1, dtype=dtype, rngs=rngs)
        self.conv4 = Conv(c3, c4, 3, 1, 1, dtype=dtype, rngs=rngs)
        self.conv5 = Conv(c4, c5, 3, 1, 1, dtype=dtype, rngs=rngs)
        self.pool3 = MaxPool(3, 2)
        self.avgpool = AdaptiveAvgPool(6)
        rate = 0.5 if opts["dropout"] is None else opts["dropout"]
        hidden = width(4096)
        zeros = nnx.initializers.zeros_init()
        self.drop6 = Dropout(rate, rngs=rngs)
        self.fc6 = Linear(c5 * 36, hidden, dtype=dtype, kernel_init=fc_init, bias_init=zeros, rngs=rngs)
        self.drop7 = Dropout(rate, rngs=rngs)
        self.fc7 = Linear(hidden, hidden, dtype=dtype, kernel_init=fc_init, bias_init=zeros, rngs=rngs)
        self.fc8 = Linear(hidden, num_classes, dtype=dtype, kernel_init=fc_init, bias_init=zeros, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = nnx.relu(self.conv1(x.astype(self.dtype)))
        if self.lrn1 is not None:
            x = self.lrn1(x)
        x = self.pool1(x)
        x = nnx.relu(self.conv2(x))
        if self.lrn2 is not None:
            x = self.lrn2(x)
        x = self.pool2(x)
        x = nnx.relu(self.conv3(x))
        x = nnx.relu(self.conv4(x))
        x = self.pool3(nnx.relu(self.conv5(x)))
        x = self.avgpool(x).reshape(x.shape[0], -1)
        x = nnx.relu(self.fc6(self.drop6(x)))
        x = nnx.relu(self.fc7(self.drop7(x)))
        return logits(self.fc8(x))


def alexnet_torchvision(num_classes: int, in_channels: int, opts: dict, *, rngs: nnx.Rngs) -> AlexNet:
    """torchvision's AlexNet: CONV1 64 11x11/4 pad 2, CONV2 192, CONV3 384, CONV4 256, CONV5 256, no LRN."""
    return AlexNet(num_classes, in_channels, {**opts, "lrn": False}, rngs=rngs, filters=(64, 192, 384, 256, 256),
                   conv1_padding=2)
